// infer_commands.cpp: using a trained checkpoint outside training: `speedrun predict` (classify
// PNG files) and `speedrun export --onnx` (the eval-mode network as an ONNX model). Both build the
// network from the recipe stored in the checkpoint, as `eval` does, without loading CIFAR-10.
#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/onnx_export.h"
#include "io/png_image.h"
#include "train/commands.h"

namespace sr {

const char* const kCifarClassNames[10] = {"airplane", "automobile", "bird",  "cat",  "deer",
                                          "dog",      "frog",       "horse", "ship", "truck"};

std::vector<float> predict_probabilities(Network& net, const Recipe& r, const std::vector<uint8_t>& images,
                                         int n) {
    Backend& b = net.backend;
    const int side = r.net.image_side, O = r.net.num_classes;
    const size_t px = size_t(side) * side * 3;
    SR_CHECK(n > 0 && images.size() == size_t(n) * px);
    // the test-time views of evaluation (recipe.h). eval.tta_select (TTA for only the least
    // confident share of a test set) has no meaning for single files: every file gets all views.
    const std::vector<TtaView> views = tta_views(r, r.tta_level);
    // eval-mode BN makes every image independent of the others in its batch, so the last chunk is
    // filled up with zeros and those rows are dropped
    const int B = std::min(n, 256);
    Workspace ws(net, B, false);  // forward only
    DeviceBuffer<uint8_t> u8(b, size_t(B) * px);
    DeviceBuffer<float> pad(b, size_t(B) * (side + 2) * (side + 2) * 3), x(b, size_t(B) * px),
        acc(b, size_t(B) * O), zeros(b, size_t(B) * O);
    std::vector<uint8_t> chunk(size_t(B) * px);
    std::vector<float> logits(size_t(B) * O), probs(size_t(n) * O);
    for (int first = 0; first < n; first += B) {
        const int m = std::min(B, n - first);
        std::fill(chunk.begin(), chunk.end(), uint8_t(0));
        std::copy(images.begin() + ptrdiff_t(first * px), images.begin() + ptrdiff_t((first + m) * px), chunk.begin());
        b.upload(u8.get(), chunk.data(), chunk.size());
        b.normalize_pad(pad.get(), u8.get(), B, side, side, r.mean.data(), r.std.data(), 1);
        b.copy(acc.get(), zeros.get(), size_t(B) * O * sizeof(float));
        for (const TtaView& v : views) {
            b.gather_crops(x.get(), pad.get(), side, side, 1, B, nullptr, 0, nullptr, v.sy, v.sx, nullptr, v.flip);
            b.axpy(acc.get(), ws.forward(x.get(), false), v.w, size_t(B) * O);
        }
        b.download(logits.data(), acc.get(), logits.size() * sizeof(float));
        for (int i = 0; i < m; ++i) {
            const float* z = &logits[size_t(i) * O];
            const double zmax = *std::max_element(z, z + O);
            double sum = 0;
            for (int o = 0; o < O; ++o) sum += std::exp(double(z[o]) - zmax);
            for (int o = 0; o < O; ++o) probs[size_t(first + i) * O + o] = float(std::exp(double(z[o]) - zmax) / sum);
        }
    }
    return probs;
}

int cmd_predict(const PredictArgs& a) {
    if (a.images.empty()) fail("predict: give one or more PNG files");
    const Checkpoint c = read_checkpoint(a.checkpoint);
    const Recipe& r = c.recipe;
    const int O = r.net.num_classes, side = r.net.image_side;
    if (a.top < 1 || a.top > O) fail("--top must be 1..{} (got {})", O, a.top);
    auto class_name = [&](int o) { return O == 10 ? std::string(kCifarClassNames[o]) : fmt::format("class {}", o); };

    // every file is read first; a bad one is reported and the others are still classified
    std::vector<uint8_t> images;
    std::vector<int> good;  // index into a.images of each image in `images`
    for (size_t i = 0; i < a.images.size(); ++i) {
        try {
            const std::vector<uint8_t> im = load_png_rgb(a.images[i], side);
            images.insert(images.end(), im.begin(), im.end());
            good.push_back(int(i));
        } catch (const Error& e) {
            std::fflush(stdout);
            fmt::print(stderr, "speedrun: error: {}\n", e.what());
        }
    }
    const int bad = int(a.images.size() - good.size());
    if (good.empty()) fail("predict: none of the {} file(s) could be read", a.images.size());

    auto backend = make_backend(a.device, a.threads, 0);
    Network net(*backend, r.net);
    load_network(c, net, false);
    const std::vector<float> p = predict_probabilities(net, r, images, int(good.size()));

    const int views = r.tta_level == 2 ? 6 : (r.tta_level == 1 ? 2 : 1);
    fmt::print("checkpoint {} (preset {}, step {}); {} test-time view{} (TTA level {}); {}\n", a.checkpoint,
               r.name, c.state.step, views, views > 1 ? "s" : "", r.tta_level, backend->name());
    size_t wfile = 4;
    for (int i : good) wfile = std::max(wfile, a.images[size_t(i)].size());
    fmt::print("{:<{}}  {:<10}  {:>6}  top {}\n", "file", wfile, "class", "prob", a.top);
    for (size_t k = 0; k < good.size(); ++k) {
        const float* q = &p[k * O];
        std::vector<int> order(static_cast<size_t>(O));
        for (int o = 0; o < O; ++o) order[size_t(o)] = o;
        std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return q[x] > q[y]; });
        std::string top;
        for (int t = 0; t < a.top; ++t)
            top += fmt::format("{}{} {:.4f}", t ? ", " : "", class_name(order[size_t(t)]), q[order[size_t(t)]]);
        fmt::print("{:<{}}  {:<10}  {:>6.4f}  {}\n", a.images[size_t(good[k])], wfile, class_name(order[0]),
                   q[order[0]], top);
    }
    if (bad) {
        std::fflush(stdout);
        fmt::print(stderr, "speedrun: error: {} of {} file(s) could not be read (see above)\n", bad, a.images.size());
        return 1;
    }
    return 0;
}

int cmd_export(const ExportArgs& a) {
    if (a.onnx.empty()) fail("export: give --onnx FILE");
    if (!onnx_export_available())  // say so before reading anything
        fail("export --onnx: this speedrun was built without ONNX (install libonnx-dev and "
             "libprotobuf-dev, e.g. with tools/install-deps, and run cmake again)");
    check_inputs_kept({{a.onnx, "--onnx"}}, {{a.checkpoint, "--checkpoint"}});
    check_output_path(a.onnx, "--onnx");
    const Checkpoint c = read_checkpoint(a.checkpoint);
    auto backend = make_cpu_backend(1);
    Network net(*backend, c.recipe.net);
    load_network(c, net, false);
    const OnnxExportInfo info = export_onnx(a.onnx, net, c.recipe.mean, c.recipe.std);
    fmt::print("wrote {} ({} bytes, opset {}, {} nodes): input \"image\" float (N,3,{},{}) RGB in [0,1], "
               "output \"logits\" (N,{}); preset {}, step {}\n",
               a.onnx, info.bytes, info.opset, info.nodes, c.recipe.net.image_side, c.recipe.net.image_side,
               c.recipe.net.num_classes, c.recipe.name, c.state.step);
    return 0;
}

}  // namespace sr
