// test_onnx_export.cpp: `speedrun export --onnx` (src/io/onnx_export.h). A tiny network with
// every tensor made non-trivial (random BN running statistics, BN scales and biases, whitening
// bias) is exported with GELU and with SiLU; the file is read back with the ONNX C++ library
// (ParseFromString): input/output names, types and shapes (dynamic batch), node count and op
// types, the OHWI -> OIHW weight transpose, onnx::checker::check_model and shape inference.
//
// The forward pass of the graph is checked by tools/onnx_check.py (ctest onnx_python_check):
// this test writes, next to each model, a JSON file with an input batch and the logits of the
// network's own eval-mode forward on it. With $SPEEDRUN_ONNX_CHECK_DIR set (the ctest fixture
// onnx_reference does that) the files stay there; otherwise they go to a temporary directory
// that is removed.
//
// In a build without ONNX the exporter must say so (and these checks are skipped).
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/onnx_export.h"
#include "train/commands.h"
#include "test_util.h"

#if SPEEDRUN_HAVE_ONNX
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>
#endif

namespace sr {
namespace {
namespace fs = std::filesystem;

NetConfig tiny(Activation act) {
    NetConfig c;
    c.widths = {8, 16, 16};
    c.act = act;
    c.bn_eps = 0.1f;  // large enough that a lost epsilon changes the logits beyond tolerance
    return c;
}

// A network whose every tensor matters: PyTorch-like init, whitening from random images, then
// random BN scales, biases and running statistics and a random whitening bias.
void make_nontrivial(Network& net, uint64_t seed) {
    Rng rng(seed);
    net.init(rng);
    const std::vector<float> x = test::randn(size_t(64) * 32 * 32 * 3, seed + 1);
    net.init_whitening(x.data(), 64, 5e-4f);
    std::vector<float> h;
    net.download(h);
    for (const TensorSpec& t : net.tensors()) {
        float* v = h.data() + t.offset;
        const std::string& n = t.name;
        auto ends = [&](const char* s) { return n.size() >= std::strlen(s) && n.compare(n.size() - std::strlen(s), std::string::npos, s) == 0; };
        for (size_t i = 0; i < t.count; ++i) {
            if (n == "whiten.bias" || ends("running_mean") || (ends(".bias") && n.find("norm") != std::string::npos))
                v[i] = 0.3f * rng.normal();
            else if (ends("running_var")) v[i] = 0.5f + 1.5f * rng.uniform();
            else if (n.find("norm") != std::string::npos && ends(".weight")) v[i] = 0.5f + rng.uniform();
        }
    }
    net.upload(h);
}

// (N,32,32,3) uint8 images -> the network's eval-mode logits (N,10), and the ONNX input
// (N,3,32,32) pixel/255.
void reference(Network& net, const std::array<float, 3>& mean, const std::array<float, 3>& stdev, int N,
               uint64_t seed, std::vector<float>& onnx_input, std::vector<float>& logits) {
    Rng rng(seed);
    std::vector<uint8_t> u8(size_t(N) * 32 * 32 * 3);
    for (auto& v : u8) v = uint8_t(rng.below(256));
    std::vector<float> nhwc(u8.size());
    onnx_input.assign(u8.size(), 0.f);
    for (int n = 0; n < N; ++n)
        for (int y = 0; y < 32; ++y)
            for (int x = 0; x < 32; ++x)
                for (int c = 0; c < 3; ++c) {
                    const size_t i = ((size_t(n) * 32 + y) * 32 + x) * 3 + c;
                    nhwc[i] = (u8[i] / 255.f - mean[c]) / stdev[c];
                    onnx_input[((size_t(n) * 3 + c) * 32 + y) * 32 + x] = u8[i] / 255.f;
                }
    Workspace ws(net, N);
    DeviceBuffer<float> xd(net.backend, nhwc.size());
    net.backend.upload(xd.get(), nhwc.data(), nhwc.size() * sizeof(float));
    logits.resize(size_t(N) * net.config().num_classes);
    net.backend.download(logits.data(), ws.forward(xd.get(), false), logits.size() * sizeof(float));
}

}  // namespace
// gtest prints parameters through PrintTo found next to their type
void PrintTo(Activation a, std::ostream* os) { *os << (a == Activation::silu ? "silu" : "gelu"); }
namespace {

class OnnxExport : public ::testing::TestWithParam<Activation> {};

TEST_P(OnnxExport, WritesAValidModelAndAReferenceForPython) {
    const Activation act = GetParam();
    const char* act_name = act == Activation::silu ? "silu" : "gelu";
    const char* env = std::getenv("SPEEDRUN_ONNX_CHECK_DIR");
    const bool keep = env && *env;
    const fs::path dir = keep ? fs::path(env) : fs::temp_directory_path() / ("speedrun-onnx-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    const std::string model = (dir / fmt::format("tiny_{}.onnx", act_name)).string();

    auto backend = make_cpu_backend(2);
    Recipe r = load_recipe("airbench94", "");
    r.net = tiny(act);
    Network net(*backend, r.net);
    make_nontrivial(net, act == Activation::silu ? 21 : 11);
#if !SPEEDRUN_HAVE_ONNX
    EXPECT_FALSE(onnx_export_available());
    EXPECT_TRUE(test::contains(test::error_of([&] { export_onnx(model, net, r.mean, r.std); }), "without ONNX"));
    GTEST_SKIP() << "this build has no ONNX (install libonnx-dev libprotobuf-dev and run cmake again)";
#else
    ASSERT_TRUE(onnx_export_available());
    const OnnxExportInfo info = export_onnx(model, net, r.mean, r.std);

    std::string bytes;
    {
        std::ifstream f(model, std::ios::binary);
        bytes.assign(std::istreambuf_iterator<char>(f), {});
    }
    EXPECT_EQ(bytes.size(), info.bytes);
    onnx::ModelProto m;
    ASSERT_TRUE(m.ParseFromString(bytes)) << model << " does not parse as an ONNX ModelProto";
    ASSERT_EQ(m.opset_import_size(), 1);
    EXPECT_EQ(m.opset_import(0).version(), 13);
    const onnx::GraphProto& g = m.graph();

    // input "image" (N,3,32,32) float, output "logits" (N,10) float, N symbolic
    auto dims = [](const onnx::ValueInfoProto& v) {
        std::vector<std::string> d;
        for (const auto& x : v.type().tensor_type().shape().dim())
            d.push_back(x.has_dim_param() ? x.dim_param() : std::to_string(x.dim_value()));
        return d;
    };
    ASSERT_EQ(g.input_size(), 1);  // weights are initializers, not inputs
    EXPECT_EQ(g.input(0).name(), "image");
    EXPECT_EQ(g.input(0).type().tensor_type().elem_type(), onnx::TensorProto::FLOAT);
    EXPECT_EQ(dims(g.input(0)), (std::vector<std::string>{"N", "3", "32", "32"}));
    ASSERT_EQ(g.output_size(), 1);
    EXPECT_EQ(g.output(0).name(), "logits");
    EXPECT_EQ(dims(g.output(0)), (std::vector<std::string>{"N", "10"}));

    // nodes: normalise 2, whitening conv 1 + GELU 5, per group conv, pool, BN, act, conv, BN, act
    // (GELU 5 nodes, SiLU 2), head pool, flatten, gemm, mul
    const int act_nodes = act == Activation::silu ? 2 : 5;
    EXPECT_EQ(g.node_size(), 2 + 1 + 5 + 3 * (5 + 2 * act_nodes) + 4);
    EXPECT_EQ(info.nodes, g.node_size());
    std::map<std::string, int> ops;
    for (const auto& n : g.node()) ops[n.op_type()]++;
    EXPECT_EQ(ops["Conv"], 7);
    EXPECT_EQ(ops["BatchNormalization"], 6);
    EXPECT_EQ(ops["MaxPool"], 4);
    EXPECT_EQ(ops["Gemm"], 1);
    EXPECT_EQ(ops["Erf"], act == Activation::silu ? 1 : 7);
    EXPECT_EQ(ops["Sigmoid"], act == Activation::silu ? 6 : 0);
    int eps = 0;
    for (const auto& n : g.node())
        if (n.op_type() == "BatchNormalization")
            for (const auto& a : n.attribute())
                if (a.name() == "epsilon") {
                    EXPECT_FLOAT_EQ(a.f(), 0.1f);
                    ++eps;
                }
    EXPECT_EQ(eps, 6);

    // conv weights are OIHW in the file: element (k, c, r, s) is our OHWI (k, r, s, c)
    std::vector<float> host;
    net.download(host);
    const TensorSpec& w1 = net.tensor("block2.conv1.weight");  // (16, 3, 3, 8)
    bool found = false;
    for (const auto& t : g.initializer()) {
        if (t.name() != "block2.conv1.weight") continue;
        found = true;
        ASSERT_EQ(std::vector<int64_t>(t.dims().begin(), t.dims().end()), (std::vector<int64_t>{16, 8, 3, 3}));
        ASSERT_EQ(t.raw_data().size(), w1.count * sizeof(float));
        const float* f = reinterpret_cast<const float*>(t.raw_data().data());
        for (int k = 0; k < 16; ++k)
            for (int c = 0; c < 8; ++c)
                for (int rr = 0; rr < 3; ++rr)
                    for (int s = 0; s < 3; ++s)
                        ASSERT_EQ(f[((k * 8 + c) * 3 + rr) * 3 + s], host[w1.offset + ((k * 3 + rr) * 3 + s) * 8 + c]);
    }
    EXPECT_TRUE(found);

    EXPECT_NO_THROW(onnx::checker::check_model(m));
    onnx::ShapeInferenceOptions opts;
    opts.check_type = true;
    opts.error_mode = 1;  // throw on inference errors
    EXPECT_NO_THROW(onnx::shape_inference::InferShapes(m, onnx::OpSchemaRegistry::Instance(), opts));
    std::map<std::string, std::vector<std::string>> inferred;
    for (const auto& v : m.graph().value_info()) inferred[v.name()] = dims(v);
    EXPECT_EQ(inferred["whiten"], (std::vector<std::string>{"N", "24", "31", "31"}));
    EXPECT_EQ(inferred["block3.pool"], (std::vector<std::string>{"N", "16", "3", "3"}));
    EXPECT_EQ(inferred["head.flatten"], (std::vector<std::string>{"N", "16"}));

    // the reference for tools/onnx_check.py
    std::vector<float> input, logits;
    reference(net, r.mean, r.std, 3, 5, input, logits);
    const nlohmann::json ref = {{"model", fs::path(model).filename().string()}, {"activation", act_name},
                                {"input_shape", {3, 3, 32, 32}}, {"input", input},
                                {"logits_shape", {3, 10}}, {"logits", logits}};
    write_file_atomic((dir / fmt::format("tiny_{}.json", act_name)).string(), ref.dump() + "\n");

    // the command: a checkpoint of the same network exports to the same bytes
    const std::string ckpt = (dir / fmt::format("tiny_{}.safetensors", act_name)).string();
    RunState st;
    st.n_train = 1;
    st.base_flip = {0};
    save_checkpoint(ckpt, net, r, st);
    const std::string via_cmd = (dir / fmt::format("tiny_{}_cmd.onnx", act_name)).string();
    ExportArgs a;
    a.checkpoint = ckpt;
    a.onnx = via_cmd;
    EXPECT_EQ(cmd_export(a), 0);
    std::string cmd_bytes;
    {
        std::ifstream f(via_cmd, std::ios::binary);
        cmd_bytes.assign(std::istreambuf_iterator<char>(f), {});
    }
    EXPECT_TRUE(cmd_bytes == bytes) << "export from the checkpoint differs from export of the network";
    fs::remove(ckpt);
    fs::remove(via_cmd);
    if (!keep) fs::remove_all(dir);
#endif
}

INSTANTIATE_TEST_SUITE_P(Activations, OnnxExport, ::testing::Values(Activation::gelu, Activation::silu),
                         [](const ::testing::TestParamInfo<Activation>& i) {
                             return std::string(i.param == Activation::silu ? "silu" : "gelu");
                         });

// airbench96's residual groups are not in the exported graph: a clear refusal, no file.
TEST(OnnxExportScope, RefusesThreeConvGroups) {
#if !SPEEDRUN_HAVE_ONNX
    GTEST_SKIP() << "this build has no ONNX";
#else
    auto backend = make_cpu_backend(1);
    NetConfig c = tiny(Activation::gelu);
    c.group_convs = 3;
    Network net(*backend, c);
    const fs::path model = fs::temp_directory_path() / ("speedrun-onnx-3conv-" + std::to_string(::getpid()) + ".onnx");
    const auto exporting = [&] { export_onnx(model.string(), net, {0.5f, 0.5f, 0.5f}, {0.25f, 0.25f, 0.25f}); };
    EXPECT_TRUE(test::contains(test::error_of(exporting), "2 convs per group"));
    EXPECT_FALSE(fs::exists(model));
#endif
}

}  // namespace
}  // namespace sr
