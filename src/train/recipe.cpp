// recipe.cpp: presets (embedded presets/*.json), config merging and strict validation.
#include "train/recipe.h"

#include "io/json_input.h"
#include "optim/schedule.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <type_traits>

#include <fmt/format.h>
#include <fmt/ranges.h>

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

const char* activation_name(Activation a) {
    switch (a) {
        case Activation::gelu: return "gelu";
        case Activation::silu: return "silu";
        case Activation::relu: return "relu";
        case Activation::celu: return "celu";
    }
    return "?";
}

namespace {

// What a value of type T is called in an error message.
template <typename T> struct TypeName { static constexpr const char* text = "a number"; };
template <typename E, size_t N> struct TypeName<std::array<E, N>> {
    static constexpr const char* text = N == 3 ? "a list of 3 numbers" : "a list of numbers";
};
template <> struct TypeName<std::vector<std::array<double, 2>>> {
    static constexpr const char* text = "a list of [x, y] pairs";
};
template <> struct TypeName<bool> { static constexpr const char* text = "true or false"; };
template <> struct TypeName<int> { static constexpr const char* text = "an integer"; };
template <> struct TypeName<std::string> { static constexpr const char* text = "a string"; };
template <> struct TypeName<std::vector<int>> {
    static constexpr const char* text = "a list of integers";
};
template <> struct TypeName<std::vector<double>> {
    static constexpr const char* text = "a list of numbers";
};

// A number that an integer key may take: an integer, or a float with an integral value (1.5 is
// refused, not cut to 1, as JSON's own conversion would).
bool integral(const nlohmann::json& v) {
    if (!v.is_number() || v.is_boolean()) return false;
    const double d = v.get<double>();  // (an integer beyond int's range would wrap)
    return std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 2147483648.0;
}

bool numbers(const nlohmann::json& v, size_t n = 0) {  // a list of numbers (n of them, if n > 0)
    return v.is_array() && (n == 0 || v.size() == n) &&
           std::all_of(v.begin(), v.end(), [](const auto& e) { return e.is_number(); });
}

template <typename T> struct IsArray : std::false_type {};
template <typename E, size_t N> struct IsArray<std::array<E, N>> : std::true_type {};

// Reads j[section][key] into out if present, checking the type; marks the key as used.
struct Reader {
    const nlohmann::json& root;
    template <typename T>
    void get(const char* section, const char* key, T& out) {
        if (!root.contains(section)) return;
        const auto& s = root.at(section);
        if (!s.is_object()) fail("config: '{}' must be an object", section);
        if (!s.contains(key)) return;
        const auto& v = s.at(key);
        bool ok = true;  // (JSON's own conversions would take true as 1 and 1.5 as 1)
        if constexpr (std::is_same_v<T, int>) ok = integral(v);
        if constexpr (std::is_floating_point_v<T>) ok = v.is_number();
        if constexpr (std::is_same_v<T, std::vector<int>>)
            ok = v.is_array() && std::all_of(v.begin(), v.end(), integral);
        if constexpr (std::is_same_v<T, std::vector<double>>) ok = numbers(v);
        if constexpr (IsArray<T>::value) ok = numbers(v, std::tuple_size_v<T>);  // no extras
        if constexpr (std::is_same_v<T, std::vector<std::array<double, 2>>>)
            ok = v.is_array() &&
                 std::all_of(v.begin(), v.end(), [](const auto& e) { return numbers(e, 2); });
        try {
            if (ok) out = v.get<T>();
        } catch (const nlohmann::json::exception&) {
            ok = false;
        }
        if (!ok)
            fail("config: '{}.{}' must be {} (got {})", section, key, TypeName<T>::text, json_brief(v));
    }
};

}  // namespace

const std::map<std::string, std::vector<std::string>>& recipe_keys() {
    static const std::map<std::string, std::vector<std::string>> known = {
        {"data", {"mean", "std"}},
        {"net", {"arch", "widths", "whiten_kernel", "bn_eps", "bn_momentum", "bn_train_scale",
                 "scaling_factor", "final_pool", "act", "celu_alpha", "head_unit_std",
                 "whiten_bias_uniform", "ghost_splits", "pool_before_norm", "residual", "dirac", "group_convs",
                 "bn_scale_init"}},
        {"opt", {"optimizer", "epochs", "batch_size", "lr", "momentum", "weight_decay",
                 "bias_scaler", "bias_lr", "head_lr", "wd", "bias_weight_decay", "lr_in_velocity", "label_smoothing",
                 "whiten_bias_epochs", "drop_last"}},
        {"ema", {"every", "decay"}},
        {"muon", {"lr", "momentum", "nesterov", "coeffs", "steps", "eps", "magnitude",
                  "renorm_base", "renorm_growth", "renorm_eps", "weight_decay"}},
        {"schedule", {"warmup_frac", "start", "peak", "end", "knots", "knots_unit", "knots_offset"}},
        {"lookahead", {"every", "base", "power", "start_epoch"}},
        {"whiten", {"images", "eps", "center", "splits"}},
        {"aug", {"flip", "flip_mode", "translate", "crop", "cutout", "cutmix", "cutmix_from_epoch",
                 "brightness", "contrast"}},
        {"eval", {"tta_level", "tta_weights", "tta_select"}},
    };
    return known;
}

namespace {

// Levenshtein distance of two short names (a key mistyped by a letter or two is 1-2 away).
size_t edit_distance(const std::string& a, const std::string& b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            const size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diag = up;
        }
    }
    return row[b.size()];
}

// The nearest of `names` within a third of the name's length (at least 1, at most 3 edits), or
// "" where none is that close; ties go to the first listed.
std::string nearest(const std::string& name, const std::vector<std::string>& names) {
    const size_t limit = std::clamp<size_t>(name.size() / 3, 1, 3);
    const std::string* best = nullptr;
    size_t best_d = limit + 1;
    for (const std::string& n : names) {
        const size_t d = edit_distance(name, n);
        if (d < best_d) best = &n, best_d = d;
    }
    return best ? *best : "";
}

// The recipe's free-text keys (strings, outside the sections).
constexpr const char* kTextKeys[] = {"name", "description", "source", "published"};

void check_known(const nlohmann::json& j) {
    const auto& known = recipe_keys();
    const std::string see = " (every key: docs/recipe-keys.md)";
    for (const auto& [k, v] : j.items()) {
        if (std::find(std::begin(kTextKeys), std::end(kTextKeys), k) != std::end(kTextKeys)) continue;
        auto it = known.find(k);
        if (it == known.end()) {
            // a key without its section (--set lr=...: 'opt.lr' or 'muon.lr'), else the nearest
            // section
            std::vector<std::string> sections, meant;
            for (const auto& [name, keys] : known) {
                sections.push_back(name);
                if (std::find(keys.begin(), keys.end(), k) != keys.end())
                    meant.push_back(fmt::format("'{}.{}'", name, k));
            }
            if (!meant.empty())
                fail("config: '{}' is a key without its section; did you mean {}?{}", k,
                     fmt::join(meant, " or "), see);
            const std::string near = nearest(k, sections);
            fail("config: unknown section '{}'{}{}", k,
                 near.empty() ? "" : fmt::format("; did you mean '{}'?", near), see);
        }
        if (!v.is_object()) fail("config: '{}' must be an object", k);
        for (const auto& [kk, _] : v.items())
            if (std::find(it->second.begin(), it->second.end(), kk) == it->second.end()) {
                // the same name in other sections first (opt.bn_momentum: net.bn_momentum, not
                // opt.momentum), else the nearest key of this section
                std::vector<std::string> meant;
                for (const auto& [other, keys] : known)
                    if (std::find(keys.begin(), keys.end(), kk) != keys.end())
                        meant.push_back(fmt::format("'{}.{}'", other, kk));
                if (meant.empty())
                    if (const std::string near = nearest(kk, it->second); !near.empty())
                        meant.push_back(fmt::format("'{}.{}'", k, near));
                fail("config: unknown key '{}.{}'{}{}", k, kk,
                     meant.empty() ? "" : fmt::format("; did you mean {}?", fmt::join(meant, " or ")), see);
            }
    }
}

}  // namespace

Recipe recipe_from_json(const nlohmann::json& j) {
    if (!j.is_object()) fail("config: the recipe must be a JSON object");
    check_known(j);
    Recipe r;
    r.json = j;
    for (const char* key : kTextKeys)
        if (j.contains(key) && !j.at(key).is_string())
            fail("config: '{}' must be a string (got {})", key, json_brief(j.at(key)));
    r.name = j.value("name", "custom");
    r.description = j.value("description", "");
    r.source = j.value("source", "");
    r.published = j.value("published", "");
    Reader rd{j};
    rd.get("data", "mean", r.mean);
    rd.get("data", "std", r.std);
    std::string arch = "airbench";
    rd.get("net", "arch", arch);
    if (arch == "airbench") r.net.arch = Arch::airbench;
    else if (arch == "resnet9") r.net.arch = Arch::resnet9;
    else if (arch == "dawn") r.net.arch = Arch::dawn;
    else fail("config: net.arch must be \"airbench\", \"resnet9\" or \"dawn\" (got \"{}\")", arch);
    rd.get("net", "widths", r.net.widths);
    rd.get("net", "celu_alpha", r.net.celu_alpha);
    rd.get("net", "ghost_splits", r.net.ghost_splits);
    rd.get("net", "pool_before_norm", r.net.pool_before_norm);
    rd.get("net", "residual", r.net.residual);
    rd.get("net", "whiten_kernel", r.net.whiten_kernel);
    rd.get("net", "bn_eps", r.net.bn_eps);
    rd.get("net", "bn_momentum", r.net.bn_momentum);
    rd.get("net", "bn_train_scale", r.net.bn_train_scale);
    rd.get("net", "bn_scale_init", r.net.bn_scale_init);
    rd.get("net", "scaling_factor", r.net.scaling_factor);
    rd.get("net", "final_pool", r.net.final_pool);
    std::string act = "gelu";
    rd.get("net", "act", act);
    if (act == "gelu") r.net.act = Activation::gelu;
    else if (act == "silu") r.net.act = Activation::silu;
    else if (act == "relu") r.net.act = Activation::relu;
    else if (act == "celu") r.net.act = Activation::celu;
    else fail("config: net.act must be \"gelu\", \"silu\", \"relu\" or \"celu\" (got \"{}\")", act);
    rd.get("net", "head_unit_std", r.net.head_unit_std);
    rd.get("net", "whiten_bias_uniform", r.net.whiten_bias_uniform);
    rd.get("net", "dirac", r.net.dirac);
    rd.get("net", "group_convs", r.net.group_convs);
    rd.get("lookahead", "start_epoch", r.lookahead_start_epoch);
    rd.get("whiten", "center", r.whiten_center);
    rd.get("whiten", "splits", r.whiten_splits);
    rd.get("aug", "cutmix", r.cutmix);
    rd.get("aug", "cutmix_from_epoch", r.cutmix_from_epoch);
    rd.get("opt", "optimizer", r.optimizer);
    rd.get("opt", "bias_lr", r.bias_lr);
    rd.get("opt", "head_lr", r.head_lr);
    rd.get("opt", "wd", r.wd);
    rd.get("opt", "bias_weight_decay", r.bias_weight_decay);
    rd.get("opt", "lr_in_velocity", r.lr_in_velocity);
    rd.get("aug", "cutout", r.cutout);
    rd.get("ema", "every", r.ema_every);
    rd.get("ema", "decay", r.ema_decay);
    rd.get("schedule", "knots", r.knots);
    rd.get("schedule", "knots_unit", r.knots_unit);
    rd.get("schedule", "knots_offset", r.knots_offset);
    rd.get("aug", "flip_mode", r.flip_mode);
    rd.get("aug", "crop", r.crop);
    rd.get("muon", "lr", r.muon.lr);
    rd.get("muon", "momentum", r.muon.momentum);
    rd.get("muon", "nesterov", r.muon.nesterov);
    rd.get("muon", "coeffs", r.muon.coeffs);
    rd.get("muon", "steps", r.muon.steps);
    rd.get("muon", "eps", r.muon.eps);
    rd.get("muon", "magnitude", r.muon.magnitude);
    rd.get("muon", "renorm_base", r.muon.renorm_base);
    rd.get("muon", "renorm_growth", r.muon.renorm_growth);
    rd.get("muon", "renorm_eps", r.muon.renorm_eps);
    rd.get("muon", "weight_decay", r.muon.weight_decay);
    rd.get("aug", "brightness", r.brightness);
    rd.get("aug", "contrast", r.contrast);
    rd.get("eval", "tta_weights", r.tta_weights);
    rd.get("eval", "tta_select", r.tta_select);
    rd.get("opt", "epochs", r.epochs);
    rd.get("opt", "batch_size", r.batch_size);
    rd.get("opt", "drop_last", r.drop_last);
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
    need(r.optimizer == "sgd" || r.optimizer == "muon" || r.optimizer == "nesterov",
         "opt.optimizer must be \"sgd\", \"muon\" or \"nesterov\"");
    need(r.optimizer != "muon" || r.net.arch == Arch::airbench,
         "opt.optimizer \"muon\" is written for net.arch \"airbench\"");
    need(r.bias_weight_decay >= 0, "opt.bias_weight_decay must be >= 0");
    need(r.ema_every >= 0, "ema.every must be >= 0 (0 turns the EMA off)");
    need(r.ema_every == 0 || (r.ema_decay >= 0 && r.ema_decay < 1), "ema.decay must be in [0, 1)");
    need(r.ema_every == 0 || r.lookahead_every == 0, "ema and lookahead cannot both be on");
    need(r.knots_unit == "step" || r.knots_unit == "epoch", "schedule.knots_unit must be \"step\" or \"epoch\"");
    for (size_t i = 1; i < r.knots.size(); ++i)
        need(r.knots[i][0] >= r.knots[i - 1][0], "schedule.knots must be in increasing order of position");
    need(r.flip_mode == "alternating" || r.flip_mode == "half" || r.flip_mode == "random",
         "aug.flip_mode must be \"alternating\", \"half\" or \"random\"");
    need(r.cutout >= 0 && r.cutout <= r.net.image_side, "aug.cutout must be in 0..32 (0 = off)");
    need(r.crop == "image" || r.crop == "image_randint" || r.crop == "batch",
         "aug.crop must be \"image\", \"image_randint\" or \"batch\"");
    need(r.cutmix >= 0 && r.cutmix <= r.net.image_side, "aug.cutmix must be in 0..32 (0 = off)");
    need(r.cutmix_from_epoch >= 0, "aug.cutmix_from_epoch must be >= 0");
    need(r.net.dirac == "first_filters" || r.net.dirac == "identity_added",
         "net.dirac must be \"first_filters\" or \"identity_added\"");
    need(r.net.dirac == "first_filters" || r.net.arch == Arch::airbench,
         "net.dirac \"identity_added\" is for net.arch \"airbench\"");
    need(r.net.dirac == "first_filters" || r.net.group_convs == 2,
         "net.dirac \"identity_added\" is hlb-CIFAR10's init of 2-conv groups (net.group_convs 3 would "
         "leave the third conv at PyTorch's init)");
    need(r.lookahead_start_epoch >= 0, "lookahead.start_epoch must be >= 0");
    need(r.whiten_splits >= 1, "whiten.splits must be >= 1");
    need(r.whiten_images % r.whiten_splits == 0, "whiten.splits must divide whiten.images");
    if (r.net.arch == Arch::airbench) {
        need(r.net.widths.size() == 3, "net.widths must have 3 entries for net.arch \"airbench\"");
        need(r.net.act == Activation::gelu || r.net.act == Activation::silu,
             "net.act must be \"gelu\" or \"silu\" for net.arch \"airbench\"");
        need(r.net.ghost_splits == 1, "net.ghost_splits is for net.arch \"resnet9\"");
        need(r.net.group_convs == 2 || r.net.group_convs == 3, "net.group_convs must be 2 or 3");
    } else if (r.net.arch == Arch::dawn) {
        need(r.net.widths.size() == 4, "net.widths must have 4 entries (layers 1-4) for net.arch \"dawn\"");
        need(r.net.whiten_kernel == 0, "net.whiten_kernel must be 0 for net.arch \"dawn\" (no whitening layer)");
        need(r.net.ghost_splits == 1, "net.ghost_splits is for net.arch \"resnet9\"");
        need(r.net.dirac == "first_filters", "net.dirac: the dawn network keeps PyTorch's default conv init");
    } else {
        need(r.net.widths.size() == 4, "net.widths must have 4 entries (prep, layer1-3) for net.arch \"resnet9\"");
        need(r.net.ghost_splits >= 1 && r.batch_size % r.net.ghost_splits == 0,
             "net.ghost_splits must be >= 1 and divide opt.batch_size");
        for (int l : r.net.residual) need(l >= 1 && l <= 3, "net.residual holds layer numbers 1..3");
        need(r.net.whiten_kernel == 0 || r.net.whiten_kernel % 2 == 1,
             "net.whiten_kernel must be 0 or odd (same padding) for net.arch \"resnet9\"");
    }
    need(r.net.celu_alpha > 0, "net.celu_alpha must be > 0");
    need(r.bias_lr > 0 && r.head_lr > 0, "opt.bias_lr and opt.head_lr must be > 0");
    need(r.wd >= 0, "opt.wd must be >= 0");
    need(r.whiten_bias_epochs >= 0, "opt.whiten_bias_epochs must be >= 0");
    need(r.muon.lr > 0, "muon.lr must be > 0");
    need(r.muon.momentum >= 0 && r.muon.momentum < 1, "muon.momentum must be in [0, 1)");
    need(r.muon.steps >= 1 && r.muon.steps <= 20, "muon.steps must be in 1..20");
    need(r.muon.eps >= 0 && r.muon.renorm_eps >= 0, "muon.eps and muon.renorm_eps must be >= 0");
    need(r.muon.magnitude.empty() || r.muon.magnitude.size() == 2,
         "muon.magnitude must be [] or [start, end]");
    need(r.muon.renorm_base >= 1, "muon.renorm_base must be >= 1");
    need(r.muon.renorm_growth >= 0, "muon.renorm_growth must be >= 0");
    need(r.muon.weight_decay >= 0, "muon.weight_decay must be >= 0");
    need(r.brightness >= 0 && r.brightness < 10, "aug.brightness must be in [0, 10)");
    need(r.contrast >= 0 && r.contrast < 1, "aug.contrast must be in [0, 1)");
    need(r.tta_weights == "airbench" || r.tta_weights == "equal",
         "eval.tta_weights must be \"airbench\" or \"equal\"");
    need(r.tta_select >= 0 && r.tta_select <= 1, "eval.tta_select must be in [0, 1]");
    need(r.epochs > 0, "opt.epochs must be > 0");
    need(r.epochs <= 10000, "opt.epochs must be at most 10000");
    need(r.batch_size > 0, "opt.batch_size must be > 0");
    need(r.drop_last || r.net.ghost_splits == 1,
         "opt.drop_last false with net.ghost_splits > 1: the last, smaller batch need not split evenly");
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
    need(r.net.whiten_kernel >= (r.net.arch == Arch::airbench ? 1 : 0) && r.net.whiten_kernel <= 3,
         "net.whiten_kernel must be 1..3 (resnet9: 0..3)");
    for (int w : r.net.widths) need(w > 0 && w <= 4096, "net.widths must be in 1..4096");
    need(r.net.bn_momentum > 0 && r.net.bn_momentum <= 1, "net.bn_momentum must be in (0, 1]");
    need(r.net.bn_eps > 0, "net.bn_eps must be > 0");
    need(r.net.bn_scale_init == "one" || r.net.bn_scale_init == "uniform",
         "net.bn_scale_init must be \"one\" or \"uniform\"");
    need(r.net.bn_scale_init == "one" || r.net.bn_train_scale,
         "net.bn_scale_init \"uniform\" needs net.bn_train_scale (a frozen scale stays 1)");
    need(r.net.final_pool >= 1, "net.final_pool must be >= 1");
    // (each eigenvalue of the patch covariance is divided by sqrt(value + eps): 0 can be inf)
    need(r.whiten_eps > 0, "whiten.eps must be > 0");
    for (float s : r.std) need(s > 0, "data.std must be > 0");
    return r;
}

namespace {
// A number the recipe holds as a float (bn_eps, the data's mean and std, ...) written as the
// shortest decimal that reads back as that float (1e-12, not 9.999999960041972e-13). Only those:
// a double field whose value happens to be a float's (opt.lr 0.10000000149011612) must be
// written as the double it is, or a checkpoint's recipe would train with another value.
nlohmann::json fj(float f) {
    const double shortest = std::strtod(fmt::format("{}", f).c_str(), nullptr);
    return std::isfinite(f) && float(shortest) == f ? shortest : double(f);
}
nlohmann::json fj(const std::array<float, 3>& v) { return {fj(v[0]), fj(v[1]), fj(v[2])}; }
}  // namespace

nlohmann::json recipe_to_json(const Recipe& r) {
    nlohmann::json j = {
        {"name", r.name}, {"description", r.description}, {"source", r.source}, {"published", r.published},
        {"data", {{"mean", fj(r.mean)}, {"std", fj(r.std)}}},
        {"net", {{"arch", r.net.arch == Arch::resnet9 ? "resnet9" : r.net.arch == Arch::dawn ? "dawn" : "airbench"},
                 {"widths", r.net.widths}, {"whiten_kernel", r.net.whiten_kernel}, {"bn_eps", fj(r.net.bn_eps)},
                 {"bn_momentum", fj(r.net.bn_momentum)}, {"bn_train_scale", r.net.bn_train_scale},
                 {"bn_scale_init", r.net.bn_scale_init},
                 {"scaling_factor", fj(r.net.scaling_factor)}, {"final_pool", r.net.final_pool},
                 {"act", activation_name(r.net.act)}, {"celu_alpha", fj(r.net.celu_alpha)},
                 {"head_unit_std", r.net.head_unit_std}, {"whiten_bias_uniform", r.net.whiten_bias_uniform},
                 {"ghost_splits", r.net.ghost_splits}, {"pool_before_norm", r.net.pool_before_norm},
                 {"residual", r.net.residual}, {"dirac", r.net.dirac}, {"group_convs", r.net.group_convs}}},
        {"opt", {{"optimizer", r.optimizer}, {"epochs", r.epochs}, {"batch_size", r.batch_size},
                 {"drop_last", r.drop_last}, {"lr", r.lr},
                 {"momentum", r.momentum}, {"weight_decay", r.weight_decay}, {"bias_scaler", r.bias_scaler},
                 {"bias_lr", r.bias_lr}, {"head_lr", r.head_lr}, {"wd", r.wd},
                 {"bias_weight_decay", r.bias_weight_decay}, {"lr_in_velocity", r.lr_in_velocity},
                 {"label_smoothing", fj(r.label_smoothing)}, {"whiten_bias_epochs", r.whiten_bias_epochs}}},
        {"muon", {{"lr", r.muon.lr}, {"momentum", r.muon.momentum}, {"nesterov", r.muon.nesterov},
                  {"coeffs", r.muon.coeffs}, {"steps", r.muon.steps}, {"eps", r.muon.eps},
                  {"magnitude", r.muon.magnitude}, {"renorm_base", r.muon.renorm_base},
                  {"renorm_growth", r.muon.renorm_growth}, {"renorm_eps", r.muon.renorm_eps},
                  {"weight_decay", r.muon.weight_decay}}},
        {"schedule", {{"warmup_frac", r.warmup_frac}, {"start", r.lr_start}, {"peak", r.lr_peak}, {"end", r.lr_end},
                      {"knots", r.knots}, {"knots_unit", r.knots_unit}, {"knots_offset", r.knots_offset}}},
        {"ema", {{"every", r.ema_every}, {"decay", r.ema_decay}}},
        {"lookahead", {{"every", r.lookahead_every}, {"base", r.lookahead_base}, {"power", r.lookahead_power},
                       {"start_epoch", r.lookahead_start_epoch}}},
        {"whiten", {{"images", r.whiten_images}, {"eps", r.whiten_eps}, {"center", r.whiten_center},
                    {"splits", r.whiten_splits}}},
        {"aug", {{"flip", r.flip}, {"flip_mode", r.flip_mode}, {"translate", r.translate},
                 {"crop", r.crop}, {"cutout", r.cutout}, {"cutmix", r.cutmix},
                 {"cutmix_from_epoch", r.cutmix_from_epoch}, {"brightness", r.brightness},
                 {"contrast", r.contrast}}},
        {"eval", {{"tta_level", r.tta_level}, {"tta_weights", r.tta_weights}, {"tta_select", r.tta_select}}},
    };
    return j;
}

std::vector<TtaView> tta_views(const Recipe& r, int level) {
    if (level <= 0) return {{0, 0, 0, 1.f}};
    if (level == 1) return {{0, 0, 0, .5f}, {0, 0, 1, .5f}};
    if (r.tta_weights == "equal") {  // the mean of the six views (hiverge)
        std::vector<TtaView> v;
        for (int sh : {0, -1, 1})
            for (int f : {0, 1}) v.push_back({sh, sh, f, 1.f / 6});
        return v;
    }
    // airbench: 0.5 mean(id, flip) + 0.5 mean over the two 1-pixel translations of mean(view, flip)
    return {{0, 0, 0, .25f}, {0, 0, 1, .25f}, {-1, -1, 0, .125f}, {-1, -1, 1, .125f},
            {1, 1, 0, .125f}, {1, 1, 1, .125f}};
}

int tta_selected(const Recipe& r, int n) {
    if (r.tta_level == 0 || r.tta_select <= 0) return n;
    return std::min(n, int(double(n) * r.tta_select));
}

long eval_forwards(const Recipe& r, int n, int b) {
    SR_CHECK(b > 0 && b <= n);
    auto padded = [b](int m) { return long(m + b - 1) / b * b; };  // whole batches
    const long views = long(tta_views(r, r.tta_level).size());
    const int k = tta_selected(r, n);
    if (k >= n) return padded(n) * views;
    return padded(n) + (k > 0 ? padded(std::max(k, b)) * views : 0);  // plain pass, then the k
}

int eval_batch_size(const Recipe& r, int n, int batch) {
    SR_CHECK(n > 0 && batch > 0);
    const int hi = std::min(batch, n), lo = std::min(hi, (batch + 1) / 2);
    int best = hi;
    for (int b = hi - 1; b >= lo; --b)
        if (eval_forwards(r, n, b) < eval_forwards(r, n, best)) best = b;
    // the training batch's workspace serves evaluation too unless another size saves more than
    // kEvalBatchSaving of the forwards (a second workspace costs memory and set-up)
    if (double(eval_forwards(r, n, hi)) <= (1 + kEvalBatchSaving) * double(eval_forwards(r, n, best)))
        return hi;
    return best;
}

Recipe load_recipe(const std::string& preset, const std::string& config_path) {
    nlohmann::json j = preset_json(preset);
    if (config_path.empty()) return recipe_from_json(j);
    std::error_code ec;
    if (std::filesystem::is_directory(config_path, ec))
        fail("{}: is a directory, not a config file", config_path);
    std::ifstream f(config_path, std::ios::binary);
    if (!f) fail("{}: cannot open the config file", config_path);
    // read in pieces up to a limit (a pipe, <(...), is fine; /dev/zero or a wrong file is not)
    constexpr size_t kMaxConfigBytes = size_t(16) << 20;
    std::string text;
    char buf[1 << 16];
    while (f.read(buf, sizeof buf) || f.gcount() > 0) {
        text.append(buf, size_t(f.gcount()));
        if (text.size() > kMaxConfigBytes)
            fail("{}: larger than {} MiB, not a config file", config_path, kMaxConfigBytes >> 20);
    }
    if (f.bad()) fail("{}: cannot read the config file", config_path);
    const nlohmann::json patch = parse_json_input(text, config_path);
    if (!patch.is_object()) fail("{}: a config file must be a JSON object", config_path);
    j.merge_patch(patch);
    try {
        return recipe_from_json(j);
    } catch (const Error& e) {  // the preset is valid: the file made it wrong
        fail("{} (merged over preset {}): {}", config_path, preset, e.what());
    }
}

void apply_override(nlohmann::json& j, const std::string& assignment) {
    const auto eq = assignment.find('=');
    if (eq == std::string::npos || eq == 0) fail("--set '{}': expected key.path=value", assignment);
    const std::string path = assignment.substr(0, eq), value = assignment.substr(eq + 1);
    const std::string flag = fmt::format("--set {}", path);
    // JSON where the value is JSON (a number, a list, true, null), else the text as a string
    const nlohmann::json v = nlohmann::json::accept(value) ? parse_json_input(value, flag) : nlohmann::json(value);
    std::string ptr = "/" + path;
    std::replace(ptr.begin(), ptr.end(), '.', '/');
    try {
        const nlohmann::json::json_pointer at(ptr);
        // a list's index: a number at most its size (one past the end appends; JSON pointer
        // would fill a longer gap with nulls: 30,000,000 of them for net.widths.30000000)
        const nlohmann::json* node = &j;
        for (size_t start = 1; node && start <= ptr.size();) {
            const size_t end = std::min(ptr.find('/', start), ptr.size());
            const std::string token = ptr.substr(start, end - start);
            start = end + 1;
            if (node->is_array()) {
                if (token.empty() || token.size() > 9 || token.find_first_not_of("0123456789") != std::string::npos ||
                    std::stoul(token) > node->size())
                    fail("{}: '{}' is not an index of that list of {} values (0..{})", flag, token,
                         node->size(), node->size());
                const size_t i = std::stoul(token);
                node = i < node->size() ? &(*node)[i] : nullptr;
            } else if (node->is_object()) {
                const auto it = node->find(token);
                node = it == node->end() ? nullptr : &*it;
            } else {
                node = nullptr;  // (a number or a string: nlohmann's message says so below)
            }
        }
        if (!v.is_null()) {
            j[at] = v;
            return;
        }
        // null removes the key, so that its default applies (as null in a --config file)
        if (j.contains(at)) j[at.parent_pointer()].erase(at.back());
    } catch (const nlohmann::json::exception& e) {
        fail("{}: {}", flag, e.what());
    }
}

std::string short_run_note(const Recipe& r, int n_train) {
    const int spe = steps_per_epoch(n_train, r.batch_size, r.drop_last);
    const int total = total_steps(n_train, r.batch_size, r.epochs, r.drop_last);
    if (r.ema_every > 0) {
        // (the EMA starts from the whitened initial network; evaluation and the end use it)
        const int updates = ema_updates(total, spe, r.ema_every);
        const double initial = std::pow(r.ema_decay, updates);
        if (initial >= 0.1)
            return fmt::format("the EMA this run ends with (decay {:.4g}, {} update{} in its {} step{}) still "
                               "holds {:.0f}% of the initial weights: its figures are mostly the untrained "
                               "network's; train longer or --set ema.every=0",
                               r.ema_decay, updates, updates == 1 ? "" : "s", total, total == 1 ? "" : "s",
                               100 * initial);
    }
    const int every = r.lookahead_every;
    const int dropped = lookahead_dropped_steps(total, lookahead_first_step(r.lookahead_start_epoch, spe, every), every);
    if (dropped <= 0 || (dropped < total && 10 * dropped < total)) return "";
    if (dropped == total)
        return fmt::format("the run's {} step{} are fewer than the lookahead's period ({}): its final weights "
                           "are the initial ones; train longer or --set lookahead.every=0",
                           total, total == 1 ? "" : "s", every);
    return fmt::format("the last {} of the run's {} steps are not in its final weights: the lookahead (every "
                       "{} steps) ends the run with its last state, as the peers do; a multiple of {} steps "
                       "keeps them",
                       dropped, total, every, every);
}

}  // namespace sr
