// recipe.cpp: presets (embedded presets/*.json), config merging and strict validation.
#include "train/recipe.h"

#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"

namespace sr {

const std::map<std::string, std::string>& embedded_presets();  // generated at build time

std::vector<std::string> preset_names() {
    std::vector<std::string> v;
    for (const auto& [k, _] : embedded_presets()) v.push_back(k);
    return v;
}

nlohmann::json preset_json(const std::string& name) {
    const auto& m = embedded_presets();
    auto it = m.find(name);
    if (it == m.end()) {
        std::string known;
        for (const auto& [k, _] : m) known += (known.empty() ? "" : ", ") + k;
        fail("unknown preset '{}' (known: {})", name, known);
    }
    return nlohmann::json::parse(it->second);
}

namespace {

// Reads j[section][key] into out if present, checking the type; marks the key as used.
struct Reader {
    const nlohmann::json& root;
    template <typename T>
    void get(const char* section, const char* key, T& out) {
        if (!root.contains(section)) return;
        const auto& s = root.at(section);
        if (!s.is_object()) fail("config: '{}' must be an object", section);
        if (!s.contains(key)) return;
        try {
            out = s.at(key).get<T>();
        } catch (const nlohmann::json::exception&) {
            fail("config: '{}.{}' has the wrong type ({})", section, key, s.at(key).dump());
        }
    }
};

void check_known(const nlohmann::json& j) {
    static const std::map<std::string, std::vector<std::string>> known = {
        {"data", {"mean", "std"}},
        {"net", {"widths", "whiten_kernel", "bn_eps", "bn_momentum", "bn_train_scale",
                 "scaling_factor", "final_pool"}},
        {"opt", {"epochs", "batch_size", "lr", "momentum", "weight_decay", "bias_scaler",
                 "label_smoothing", "whiten_bias_epochs"}},
        {"schedule", {"warmup_frac", "start", "peak", "end"}},
        {"lookahead", {"every", "base", "power"}},
        {"whiten", {"images", "eps"}},
        {"aug", {"flip", "translate"}},
        {"eval", {"tta_level"}},
    };
    for (const auto& [k, v] : j.items()) {
        if (k == "name" || k == "description" || k == "source" || k == "published") continue;
        auto it = known.find(k);
        if (it == known.end()) fail("config: unknown section '{}'", k);
        if (!v.is_object()) fail("config: '{}' must be an object", k);
        for (const auto& [kk, _] : v.items())
            if (std::find(it->second.begin(), it->second.end(), kk) == it->second.end())
                fail("config: unknown key '{}.{}'", k, kk);
    }
}

}  // namespace

Recipe recipe_from_json(const nlohmann::json& j) {
    if (!j.is_object()) fail("config: the recipe must be a JSON object");
    check_known(j);
    Recipe r;
    r.json = j;
    r.name = j.value("name", "custom");
    r.description = j.value("description", "");
    r.source = j.value("source", "");
    r.published = j.value("published", "");
    Reader rd{j};
    rd.get("data", "mean", r.mean);
    rd.get("data", "std", r.std);
    rd.get("net", "widths", r.net.widths);
    rd.get("net", "whiten_kernel", r.net.whiten_kernel);
    rd.get("net", "bn_eps", r.net.bn_eps);
    rd.get("net", "bn_momentum", r.net.bn_momentum);
    rd.get("net", "bn_train_scale", r.net.bn_train_scale);
    rd.get("net", "scaling_factor", r.net.scaling_factor);
    rd.get("net", "final_pool", r.net.final_pool);
    rd.get("opt", "epochs", r.epochs);
    rd.get("opt", "batch_size", r.batch_size);
    rd.get("opt", "lr", r.lr);
    rd.get("opt", "momentum", r.momentum);
    rd.get("opt", "weight_decay", r.weight_decay);
    rd.get("opt", "bias_scaler", r.bias_scaler);
    rd.get("opt", "label_smoothing", r.label_smoothing);
    rd.get("opt", "whiten_bias_epochs", r.whiten_bias_epochs);
    rd.get("schedule", "warmup_frac", r.warmup_frac);
    rd.get("schedule", "start", r.lr_start);
    rd.get("schedule", "peak", r.lr_peak);
    rd.get("schedule", "end", r.lr_end);
    rd.get("lookahead", "every", r.lookahead_every);
    rd.get("lookahead", "base", r.lookahead_base);
    rd.get("lookahead", "power", r.lookahead_power);
    rd.get("whiten", "images", r.whiten_images);
    rd.get("whiten", "eps", r.whiten_eps);
    rd.get("aug", "flip", r.flip);
    rd.get("aug", "translate", r.translate);
    rd.get("eval", "tta_level", r.tta_level);

    auto need = [](bool ok, const char* what) {
        if (!ok) fail("config: {}", what);
    };
    need(r.epochs > 0, "opt.epochs must be > 0");
    need(r.batch_size > 0, "opt.batch_size must be > 0");
    need(r.lr > 0, "opt.lr must be > 0");
    need(r.momentum >= 0 && r.momentum < 1, "opt.momentum must be in [0, 1)");
    need(r.weight_decay >= 0, "opt.weight_decay must be >= 0");
    need(r.bias_scaler > 0, "opt.bias_scaler must be > 0");
    need(r.label_smoothing >= 0 && r.label_smoothing < 1, "opt.label_smoothing must be in [0, 1)");
    need(r.warmup_frac >= 0 && r.warmup_frac < 1, "schedule.warmup_frac must be in [0, 1)");
    need(r.lookahead_every >= 0, "lookahead.every must be >= 0 (0 turns lookahead off)");
    need(r.whiten_images > 0, "whiten.images must be > 0");
    need(r.translate >= 0 && r.translate <= 4, "aug.translate must be in 0..4");
    need(r.tta_level >= 0 && r.tta_level <= 2, "eval.tta_level must be 0, 1 or 2");
    need(r.net.whiten_kernel >= 1 && r.net.whiten_kernel <= 3, "net.whiten_kernel must be 1..3");
    for (int w : r.net.widths) need(w > 0 && w <= 4096, "net.widths must be in 1..4096");
    need(r.net.bn_momentum > 0 && r.net.bn_momentum <= 1, "net.bn_momentum must be in (0, 1]");
    need(r.net.bn_eps > 0, "net.bn_eps must be > 0");
    need(r.net.final_pool >= 1, "net.final_pool must be >= 1");
    for (float s : r.std) need(s > 0, "data.std must be > 0");
    return r;
}

nlohmann::json recipe_to_json(const Recipe& r) {
    return {
        {"name", r.name}, {"description", r.description}, {"source", r.source}, {"published", r.published},
        {"data", {{"mean", r.mean}, {"std", r.std}}},
        {"net", {{"widths", r.net.widths}, {"whiten_kernel", r.net.whiten_kernel}, {"bn_eps", r.net.bn_eps},
                 {"bn_momentum", r.net.bn_momentum}, {"bn_train_scale", r.net.bn_train_scale},
                 {"scaling_factor", r.net.scaling_factor}, {"final_pool", r.net.final_pool}}},
        {"opt", {{"epochs", r.epochs}, {"batch_size", r.batch_size}, {"lr", r.lr}, {"momentum", r.momentum},
                 {"weight_decay", r.weight_decay}, {"bias_scaler", r.bias_scaler},
                 {"label_smoothing", r.label_smoothing}, {"whiten_bias_epochs", r.whiten_bias_epochs}}},
        {"schedule", {{"warmup_frac", r.warmup_frac}, {"start", r.lr_start}, {"peak", r.lr_peak}, {"end", r.lr_end}}},
        {"lookahead", {{"every", r.lookahead_every}, {"base", r.lookahead_base}, {"power", r.lookahead_power}}},
        {"whiten", {{"images", r.whiten_images}, {"eps", r.whiten_eps}}},
        {"aug", {{"flip", r.flip}, {"translate", r.translate}}},
        {"eval", {{"tta_level", r.tta_level}}},
    };
}

Recipe load_recipe(const std::string& preset, const std::string& config_path) {
    nlohmann::json j = preset_json(preset);
    if (!config_path.empty()) {
        std::ifstream f(config_path);
        if (!f) fail("{}: cannot open the config file", config_path);
        nlohmann::json patch;
        try {
            patch = nlohmann::json::parse(f);
        } catch (const nlohmann::json::parse_error& e) {
            fail("{}: not valid JSON ({})", config_path, e.what());
        }
        j.merge_patch(patch);
    }
    return recipe_from_json(j);
}

void apply_override(nlohmann::json& j, const std::string& assignment) {
    const auto eq = assignment.find('=');
    if (eq == std::string::npos || eq == 0) fail("--set '{}': expected key.path=value", assignment);
    const std::string path = assignment.substr(0, eq), value = assignment.substr(eq + 1);
    nlohmann::json v;
    try {
        v = nlohmann::json::parse(value);
    } catch (const nlohmann::json::parse_error&) {
        v = value;
    }
    std::string ptr = "/" + path;
    std::replace(ptr.begin(), ptr.end(), '.', '/');
    j[nlohmann::json::json_pointer(ptr)] = v;
}

}  // namespace sr
