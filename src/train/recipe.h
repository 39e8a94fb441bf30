// recipe.h: a training recipe as plain data. Presets are JSON files in presets/ (compiled into
// the binary); --config FILE.json is merged over the preset (RFC 7386 merge patch), then single
// flags over that. No code branches on a preset's name.
#pragma once
#include <array>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/network.h"

namespace sr {

struct Recipe {
    std::string name, description, source, published;
    std::array<float, 3> mean{}, std{};
    NetConfig net;
    // optimizer (hyperparameters in airbench's decoupled form, per 1024 examples)
    double epochs = 9.9;
    int batch_size = 1024;
    double lr = 11.5, momentum = 0.85, weight_decay = 0.0153, bias_scaler = 64.0;
    float label_smoothing = 0.2f;
    int whiten_bias_epochs = 3;
    // piecewise-linear lr multiplier: start -> peak over warmup_frac of the steps, -> end
    double warmup_frac = 0.23, lr_start = 0.2, lr_peak = 1.0, lr_end = 0.07;
    // lookahead: every k steps, decay = base^k * (step / total)^power
    int lookahead_every = 5;
    double lookahead_base = 0.95, lookahead_power = 3.0;
    int whiten_images = 5000;
    double whiten_eps = 5e-4;
    bool flip = true;  // alternating flip: random half at the start, then every image each epoch
    int translate = 2;
    int tta_level = 2;

    nlohmann::json json;  // the resolved recipe, as loaded (for logs and summaries)
};

// Names of the built-in presets, and the JSON of one (throws sr::Error on an unknown name).
std::vector<std::string> preset_names();
nlohmann::json preset_json(const std::string& name);

// Validates and converts; unknown keys and out-of-range values are errors naming the key.
Recipe recipe_from_json(const nlohmann::json& j);

// The preset, with a config file merged over it (path may be empty).
Recipe load_recipe(const std::string& preset, const std::string& config_path);

// The recipe as it will run, as JSON that recipe_from_json reads back to the same values
// (checkpoints and summaries store this, not the preset text it started from).
nlohmann::json recipe_to_json(const Recipe& r);

// "key.path=value" overrides (value parsed as JSON, else taken as a string).
void apply_override(nlohmann::json& j, const std::string& assignment);

}  // namespace sr
