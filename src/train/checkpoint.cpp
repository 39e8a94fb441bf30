// checkpoint.cpp: see checkpoint.h.
#include "train/checkpoint.h"

#include <algorithm>
#include <climits>
#include <cstring>

#include "io/json_input.h"
#include "train/trainer.h"

#include "core/error.h"

namespace sr {
namespace {

constexpr const char* kFormat = "speedrun-checkpoint";
constexpr int kVersion = 1;

std::vector<int64_t> shape64(const TensorSpec& t) { return {t.shape.begin(), t.shape.end()}; }

// FNV-1a, one 64-bit word a step: the hashes of tensors_hash and data_fingerprint.
constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ull;
void fnv_mix(uint64_t& h, uint64_t w) { h = (h ^ w) * 0x100000001b3ull; }
// n bytes at p, 8 to a word, the tail's bytes one a word
void fnv_mix_bytes(uint64_t& h, const uint8_t* p, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        fnv_mix(h, w);
    }
    for (; i < n; ++i) fnv_mix(h, p[i]);
}

std::vector<float> download_range(const Network& net, const float* base, const TensorSpec& t) {
    std::vector<float> v(t.count);
    net.backend.download(v.data(), base + t.offset, t.count * sizeof(float));
    return v;
}

}  // namespace

void save_checkpoint(const std::string& path, const Network& net, const Recipe& r, const RunState& st) {
    StFile f;
    for (const auto& t : net.tensors()) {
        put_tensor(f, t.name, shape64(t), download_range(net, net.params.get(), t));
        put_tensor(f, "momentum." + t.name, shape64(t), download_range(net, net.momentum.get(), t));
        put_tensor(f, "ema." + t.name, shape64(t), download_range(net, net.ema.get(), t));
    }
    put_tensor(f, "state.base_flip", {int64_t(st.base_flip.size())}, st.base_flip);
    put_tensor(f, "state.rng", {4}, std::vector<uint64_t>(st.rng_epoch_start.begin(), st.rng_epoch_start.end()));
    const nlohmann::json state = {{"seed", st.seed}, {"step", st.step}, {"epoch", st.epoch},
                                  {"steps_in_epoch", st.steps_in_epoch},
                                  {"epoch_stats", {st.epoch_stats[0], st.epoch_stats[1]}},
                                  {"timed", st.timed}, {"epoch_timed", st.epoch_timed},
                                  {"n_train", st.n_train}, {"epochs", st.epochs},
                                  {"builds", st.builds}, {"data_fingerprint", st.data_fingerprint},
                                  {"data_source", st.data_source}};
    f.metadata["format"] = kFormat;
    f.metadata["version"] = std::to_string(kVersion);
    f.metadata["recipe"] = json_text(recipe_to_json(r));
    f.metadata["state"] = json_text(state);
    f.metadata["tensors_fnv1a64"] = fmt::format("{:016x}", tensors_hash(f));
    write_safetensors(path, f);
}

Checkpoint read_checkpoint(const std::string& path) {
    Checkpoint c;
    c.file = read_safetensors(path);
    const auto& m = c.file.metadata;
    auto meta = [&](const char* key) -> const std::string& {
        auto it = m.find(key);
        if (it == m.end()) fail("checkpoint {}: metadata has no '{}' (not a speedrun checkpoint?)", path, key);
        return it->second;
    };
    if (meta("format") != kFormat) fail("checkpoint {}: format '{}' is not '{}'", path, meta("format"), kFormat);
    if (meta("version") != std::to_string(kVersion))
        fail("checkpoint {}: version {} (this program reads version {})", path, meta("version"), kVersion);
    try {
        c.recipe = recipe_from_json(parse_json_input(meta("recipe"), "metadata 'recipe'"));
        const auto s = parse_json_input(meta("state"), "metadata 'state'");
        RunState& st = c.state;
        // counts are whole numbers in range (nlohmann's get<int> casts: 10.7 read as 10, 2^32 + 1024 as 1024)
        const auto count = [&](const char* key) {
            const auto& v = s.at(key);
            if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT_MAX)
                fail("run state's '{}' is not a count from 0 to {}: {}", key, INT_MAX, json_brief(v));
            return int(v.get<int64_t>());
        };
        const auto& seed = s.at("seed");
        if (!seed.is_number_unsigned()) fail("run state's 'seed' is not a whole number >= 0: {}", json_brief(seed));
        st.seed = seed.get<uint64_t>();
        st.step = count("step");
        st.epoch = count("epoch");
        st.steps_in_epoch = count("steps_in_epoch");
        st.epoch_stats[0] = s.at("epoch_stats").at(0).get<float>();
        st.epoch_stats[1] = s.at("epoch_stats").at(1).get<float>();
        st.timed = s.at("timed").get<double>();
        // (checkpoints written before epoch_timed existed: the time since the last finished
        // epoch, or since the start when none has finished, so the whitening set-up too)
        const auto& done = s.at("epochs");
        if (!done.is_array()) fail("run state's 'epochs' is not a list: {}", json_brief(done));
        for (const auto& e : done) {  // (read at the resume, after the data: checked here, named)
            try {
                (void)epoch_from_json(e);
            } catch (const nlohmann::json::exception& x) {
                fail("run state's 'epochs' holds a bad entry {} ({})", json_brief(e), x.what());
            }
        }
        const double since_last = st.timed - (done.empty() ? 0.0 : done.back().at("total_seconds").get<double>());
        st.epoch_timed = s.contains("epoch_timed") ? s.at("epoch_timed").get<double>() : std::max(0.0, since_last);
        st.n_train = count("n_train");
        st.epochs = s.at("epochs");
        if (s.contains("builds")) {
            const auto& b = s.at("builds");
            bool strings = b.is_array();
            for (const auto& e : b) strings = strings && e.is_string();
            if (!strings) fail("run state's 'builds' is not a list of strings: {}", json_brief(b));
            st.builds = b.get<std::vector<std::string>>();
        }
        st.data_fingerprint = s.value("data_fingerprint", "");
        st.data_source = s.value("data_source", "");
        if (st.n_train == 0) fail("run state's 'n_train' is 0");
    } catch (const nlohmann::json::exception& e) {
        fail("checkpoint {}: bad metadata ({})", path, e.what());
    } catch (const Error& e) {
        fail("checkpoint {}: {}", path, e.what());
    }
    // the tensors' bytes as saved (checkpoints written before the checksum was kept have none)
    if (auto it = m.find("tensors_fnv1a64"); it != m.end()) {
        const std::string h = fmt::format("{:016x}", tensors_hash(c.file));
        if (it->second != h)
            fail("checkpoint {}: its tensors do not match the checksum saved with them ({} against {}): "
                 "a damaged file",
                 path, h, it->second);
    }
    c.state.base_flip = get_tensor<uint8_t>(c.file, "state.base_flip", {int64_t(c.state.n_train)});
    for (size_t i = 0; i < c.state.base_flip.size(); ++i)
        if (c.state.base_flip[i] > 1)
            fail("checkpoint {}: state.base_flip[{}] is {} (a flip is 0 or 1)", path, i, c.state.base_flip[i]);
    const auto rng = get_tensor<uint64_t>(c.file, "state.rng", {4});
    std::copy(rng.begin(), rng.end(), c.state.rng_epoch_start.begin());
    return c;
}

void load_network(const Checkpoint& c, Network& net, bool with_optimizer) {
    auto put = [&](float* base, const std::string& prefix) {
        for (const auto& t : net.tensors()) {
            const auto v = get_tensor<float>(c.file, prefix + t.name, shape64(t));
            net.backend.upload(base + t.offset, v.data(), v.size() * sizeof(float));
        }
    };
    put(net.params.get(), "");
    if (with_optimizer) {
        put(net.momentum.get(), "momentum.");
        put(net.ema.get(), "ema.");
    }
}

uint64_t tensors_hash(const StFile& f) {
    uint64_t h = kFnvBasis;
    for (const auto& [name, t] : f.tensors) {
        for (char c : name) fnv_mix(h, uint8_t(c));
        fnv_mix(h, uint64_t(t.dtype));
        fnv_mix(h, t.shape.size());
        for (int64_t d : t.shape) fnv_mix(h, uint64_t(d));
        fnv_mix_bytes(h, t.data.data(), t.data.size());
        fnv_mix(h, t.data.size());
    }
    return h;
}

std::string data_fingerprint(const std::vector<uint8_t>& images, const std::vector<int32_t>& labels, int n) {
    uint64_t h = kFnvBasis;  // (a run's set: ~150 MB)
    fnv_mix_bytes(h, images.data(), std::min(images.size(), size_t(n) * 3072));
    for (int k = 0; k < n && k < int(labels.size()); ++k) fnv_mix(h, uint64_t(uint32_t(labels[size_t(k)])));
    fnv_mix(h, uint64_t(n));
    return fmt::format("fnv1a64:{:016x}", h);
}

}  // namespace sr
