// onnx_export.cpp: see onnx_export.h (the graph is described there). Compiled in every build;
// the ONNX part only when CMake found libonnx-dev (SPEEDRUN_HAVE_ONNX).
#include "io/onnx_export.h"

#include "core/error.h"

#if SPEEDRUN_HAVE_ONNX
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <vector>

#include <fmt/format.h>
#include <onnx/checker.h>   // onnx::checker::check_model, ValidationError
#include <onnx/onnx_pb.h>   // onnx::ModelProto, GraphProto, NodeProto, TensorProto

#include "io/atomic_file.h"
#endif

namespace sr {

#if !SPEEDRUN_HAVE_ONNX

bool onnx_export_available() { return false; }

OnnxExportInfo export_onnx(const std::string& path, const Network&, const std::array<float, 3>&,
                           const std::array<float, 3>&) {
    fail("{}: cannot write ONNX: this speedrun was built without ONNX (install libonnx-dev and "
         "libprotobuf-dev, e.g. with tools/install-deps, and run cmake again)",
         path);
}

#else

namespace {

constexpr int kOpset = 13;

// Builds the graph node by node; value names are the layer names of the network.
class GraphBuilder {
public:
    explicit GraphBuilder(onnx::GraphProto* g) : g_(g) {}

    onnx::NodeProto* node(const char* op, std::initializer_list<std::string> in, const std::string& out) {
        onnx::NodeProto* n = g_->add_node();
        n->set_op_type(op);
        n->set_name(out);
        for (const auto& s : in) n->add_input(s);
        n->add_output(out);
        return n;
    }
    static void attr(onnx::NodeProto* n, const char* name, std::initializer_list<int64_t> v) {
        onnx::AttributeProto* a = n->add_attribute();
        a->set_name(name);
        a->set_type(onnx::AttributeProto::INTS);
        for (int64_t x : v) a->add_ints(x);
    }
    static void attr(onnx::NodeProto* n, const char* name, int64_t v) {
        onnx::AttributeProto* a = n->add_attribute();
        a->set_name(name);
        a->set_type(onnx::AttributeProto::INT);
        a->set_i(v);
    }
    static void attr(onnx::NodeProto* n, const char* name, float v) {
        onnx::AttributeProto* a = n->add_attribute();
        a->set_name(name);
        a->set_type(onnx::AttributeProto::FLOAT);
        a->set_f(v);
    }
    // A float initializer (a constant input of the graph), little-endian raw data.
    const std::string& constant(const std::string& name, std::initializer_list<int64_t> dims,
                                const std::vector<float>& v) {
        size_t n = 1;
        for (int64_t d : dims) n *= size_t(d);
        SR_CHECK(n == v.size());
        onnx::TensorProto* t = g_->add_initializer();
        t->set_name(name);
        t->set_data_type(onnx::TensorProto::FLOAT);
        for (int64_t d : dims) t->add_dims(d);
        t->set_raw_data(std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float)));
        return t->name();
    }
    // 0.5 x (1 + erf(x / sqrt 2)): the exact GELU the backends compute
    std::string gelu(const std::string& x) {
        node("Div", {x, sqrt2_}, x + ".gelu.div");
        node("Erf", {x + ".gelu.div"}, x + ".gelu.erf");
        node("Add", {x + ".gelu.erf", one_}, x + ".gelu.add");
        node("Mul", {x, x + ".gelu.add"}, x + ".gelu.mul");
        return node("Mul", {x + ".gelu.mul", half_}, x + ".gelu")->output(0);
    }
    std::string silu(const std::string& x) {
        node("Sigmoid", {x}, x + ".silu.sigmoid");
        return node("Mul", {x, x + ".silu.sigmoid"}, x + ".silu")->output(0);
    }
    void scalars() {
        sqrt2_ = constant("const.sqrt2", {}, {float(std::sqrt(2.0))});
        one_ = constant("const.one", {}, {1.f});
        half_ = constant("const.half", {}, {0.5f});
    }

private:
    onnx::GraphProto* g_;
    std::string sqrt2_, one_, half_;
};

void tensor_value(onnx::ValueInfoProto* v, const std::string& name, std::initializer_list<int64_t> dims) {
    v->set_name(name);
    onnx::TypeProto_Tensor* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(onnx::TensorProto::FLOAT);
    onnx::TensorShapeProto* s = t->mutable_shape();
    for (int64_t d : dims) {
        if (d < 0) s->add_dim()->set_dim_param("N");  // the batch, any size
        else s->add_dim()->set_dim_value(d);
    }
}

}  // namespace

bool onnx_export_available() { return true; }

OnnxExportInfo export_onnx(const std::string& path, const Network& net, const std::array<float, 3>& mean,
                           const std::array<float, 3>& stdev) {
    const NetConfig& c = net.config();
    if (c.arch != Arch::airbench)
        fail("{}: ONNX export is written for the airbench network only (this checkpoint's net.arch is "
             "{})", path, c.arch == Arch::resnet9 ? "resnet9" : "dawn");
    if (c.group_convs != 2)
        fail("{}: ONNX export is written for 2 convs per group (this checkpoint has {}, airbench96's "
             "residual group)", path, c.group_convs);
    std::vector<float> host;
    net.download(host);
    auto values = [&](const std::string& name) {
        const TensorSpec& t = net.tensor(name);
        return std::vector<float>(host.begin() + ptrdiff_t(t.offset), host.begin() + ptrdiff_t(t.offset + t.count));
    };
    // conv weights: ours are OHWI (K,R,S,C), ONNX wants OIHW (K,C,R,S)
    auto conv_weight = [&](const std::string& name) {
        const TensorSpec& t = net.tensor(name);
        const int K = t.shape[0], R = t.shape[1], S = t.shape[2], C = t.shape[3];
        const std::vector<float> v = values(name);
        std::vector<float> o(v.size());
        for (int k = 0; k < K; ++k)
            for (int r = 0; r < R; ++r)
                for (int s = 0; s < S; ++s)
                    for (int ci = 0; ci < C; ++ci)
                        o[((size_t(k) * C + ci) * R + r) * S + s] = v[((size_t(k) * R + r) * S + s) * C + ci];
        return o;
    };
    const int side = c.image_side, k = c.whiten_kernel, cw = c.whiten_width();
    int H = side - k + 1;
    for (int gi = 0; gi < 3; ++gi) H /= 2;
    if (H / c.final_pool != 1)
        fail("{}: cannot export: the final pool leaves {}x{} pixels, the head expects 1x1", path,
             H / c.final_pool, H / c.final_pool);

    onnx::ModelProto m;
    m.set_ir_version(onnx::IR_VERSION);
    m.set_producer_name("speedrun");
    m.set_doc_string("airbench-family ResNet, eval mode; input: RGB in [0,1], NCHW; output: logits");
    onnx::OperatorSetIdProto* opset = m.add_opset_import();
    opset->set_domain("");
    opset->set_version(kOpset);
    onnx::GraphProto* g = m.mutable_graph();
    g->set_name("speedrun");
    tensor_value(g->add_input(), "image", {-1, 3, side, side});
    tensor_value(g->add_output(), "logits", {-1, c.num_classes});

    GraphBuilder b(g);
    b.scalars();
    auto act = [&](const std::string& x) { return c.act == Activation::silu ? b.silu(x) : b.gelu(x); };
    b.constant("normalize.mean", {1, 3, 1, 1}, {mean[0], mean[1], mean[2]});
    b.constant("normalize.std", {1, 3, 1, 1}, {stdev[0], stdev[1], stdev[2]});
    b.node("Sub", {"image", "normalize.mean"}, "normalize.sub");
    b.node("Div", {"normalize.sub", "normalize.std"}, "normalize");

    b.constant("whiten.weight", {cw, 3, k, k}, conv_weight("whiten.weight"));
    b.constant("whiten.bias", {cw}, values("whiten.bias"));
    auto* wc = b.node("Conv", {"normalize", "whiten.weight", "whiten.bias"}, "whiten");
    GraphBuilder::attr(wc, "kernel_shape", {k, k});
    GraphBuilder::attr(wc, "pads", {0, 0, 0, 0});
    std::string x = b.gelu("whiten");  // the whitening activation is GELU in every recipe

    int cin = cw;
    for (int gi = 0; gi < 3; ++gi) {
        const int C = c.widths[gi];
        const std::string blk = fmt::format("block{}.", gi + 1);
        auto conv = [&](int j, int ci, const std::string& in) {
            const std::string w = blk + fmt::format("conv{}.weight", j);
            b.constant(w, {C, ci, 3, 3}, conv_weight(w));
            auto* n = b.node("Conv", {in, w}, blk + fmt::format("conv{}", j));
            GraphBuilder::attr(n, "kernel_shape", {3, 3});
            GraphBuilder::attr(n, "pads", {1, 1, 1, 1});
            return n->output(0);
        };
        auto bn = [&](int j, const std::string& in) {
            const std::string p = blk + fmt::format("norm{}.", j);
            for (const char* t : {"weight", "bias", "running_mean", "running_var"})
                b.constant(p + t, {C}, values(p + t));
            auto* n = b.node("BatchNormalization",
                             {in, p + "weight", p + "bias", p + "running_mean", p + "running_var"},
                             blk + fmt::format("norm{}", j));
            GraphBuilder::attr(n, "epsilon", c.bn_eps);
            return n->output(0);
        };
        x = conv(1, cin, x);
        auto* pool = b.node("MaxPool", {x}, blk + "pool");
        GraphBuilder::attr(pool, "kernel_shape", {2, 2});
        GraphBuilder::attr(pool, "strides", {2, 2});
        x = act(bn(1, pool->output(0)));
        x = conv(2, C, x);
        x = act(bn(2, x));
        cin = C;
    }
    auto* fp = b.node("MaxPool", {x}, "head.pool");
    GraphBuilder::attr(fp, "kernel_shape", {c.final_pool, c.final_pool});
    GraphBuilder::attr(fp, "strides", {c.final_pool, c.final_pool});
    auto* flat = b.node("Flatten", {"head.pool"}, "head.flatten");
    GraphBuilder::attr(flat, "axis", int64_t(1));
    b.constant("head.weight", {c.num_classes, cin}, values("head.weight"));
    auto* gemm = b.node("Gemm", {"head.flatten", "head.weight"}, "head.linear");
    GraphBuilder::attr(gemm, "transB", int64_t(1));
    b.constant("head.scale", {}, {c.scaling_factor});
    b.node("Mul", {"head.linear", "head.scale"}, "logits");

    try {
        onnx::checker::check_model(m);
    } catch (const std::exception& e) {
        fail("{}: the ONNX model failed onnx::checker ({}); this is a bug in the exporter", path, e.what());
    }
    std::string bytes;
    if (!m.SerializeToString(&bytes)) fail("{}: cannot serialise the ONNX model", path);
    write_file_atomic(path, bytes);
    return {kOpset, g->node_size(), bytes.size()};
}

#endif

}  // namespace sr
