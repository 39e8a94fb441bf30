// test_predict.cpp: `speedrun predict` end to end. A tiny network is trained for one epoch on the
// synthetic set (4 steps; about a second on 2 idle cores) and saved; test images written as PNG files and
// classified through the PNG reader and predict_probabilities must give what the network itself
// gives on those images: the recipe's TTA views (level 2: the image, its mirror and the two
// 1-pixel diagonal translations of both, reflect-padded; weights 1/4, 1/4, 1/8 x 4) built here on
// the host, eval-mode forward passes, softmax of the weighted logits. Then the program itself:
// a bad file among good ones is named, the good ones are still classified, exit status 1.
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <sys/wait.h>
#include <unistd.h>

#include "io/png_image.h"
#include "io/png_test_util.h"
#include "train/commands.h"
#include "test_util.h"

namespace sr {
namespace {
namespace fs = std::filesystem;

// (n, 32, 32, 3) normalised view (shift sy, sx after reflect padding by 1; mirrored if flip) of
// uint8 images, as backend.h defines gather_crops on normalize_pad's output.
std::vector<float> host_view(const std::vector<uint8_t>& u8, int n, const Recipe& r, int sy, int sx, bool flip) {
    const int H = 32;
    auto reflect = [&](int i) { return i < 0 ? -i : (i >= H ? 2 * H - 2 - i : i); };
    std::vector<float> out(size_t(n) * H * H * 3);
    for (int b = 0; b < n; ++b)
        for (int y = 0; y < H; ++y)
            for (int x = 0; x < H; ++x) {
                const int xs = flip ? H - 1 - x : x;
                const int py = reflect(y + sy), px = reflect(xs + sx);
                for (int c = 0; c < 3; ++c) {
                    const float v = u8[((size_t(b) * H + py) * H + px) * 3 + c];
                    out[((size_t(b) * H + y) * H + x) * 3 + c] = (v / 255.f - r.mean[c]) / r.std[c];
                }
            }
    return out;
}

TEST(Predict, PngOfATestImageGivesTheNetworksOwnPrediction) {
    const fs::path dir = fs::temp_directory_path() / ("speedrun-predict-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    const std::string ckpt = (dir / "tiny.safetensors").string();
    const Cifar10 data = make_synthetic_cifar10(512, 64, 3);
    Recipe r = load_recipe("airbench94", "");
    r.net.widths = {8, 16, 16};
    r.batch_size = 128;
    r.epochs = 1;
    r.tta_level = 2;
    auto backend = make_cpu_backend(2);
    {
        TrainOptions o;
        o.subset = 512;
        o.test_subset = 64;
        o.eval_each_epoch = false;
        o.quiet = true;
        o.progress = false;
        o.checkpoint_path = ckpt;
        Trainer t(*backend, r, data, o);
        t.run(3);
    }
    const Checkpoint c = read_checkpoint(ckpt);
    const Recipe& cr = c.recipe;
    ASSERT_EQ(cr.tta_level, 2);

    // four test images as 32x32 RGB PNG files; the reader gives them back byte for byte
    const int n = 4;
    std::vector<std::string> files;
    std::vector<uint8_t> from_png;
    for (int i = 0; i < n; ++i) {
        test::PngFile f;
        f.width = f.height = 32;
        f.rows.assign(data.test.image(i), data.test.image(i) + kCifarPixels);
        files.push_back((dir / ("test" + std::to_string(i) + ".png")).string());
        ASSERT_TRUE(test::write_png_file(files.back(), f));
        const std::vector<uint8_t> im = load_png_rgb(files.back(), 32);
        from_png.insert(from_png.end(), im.begin(), im.end());
    }
    const std::vector<uint8_t> direct(data.test.image(0), data.test.image(0) + size_t(n) * kCifarPixels);
    ASSERT_EQ(from_png, direct);

    Network net(*backend, cr.net);
    load_network(c, net, false);
    const std::vector<float> p = predict_probabilities(net, cr, from_png, n);

    // the reference: the network's own forward passes on the host-made views
    const int O = cr.net.num_classes;
    Workspace ws(net, n);
    DeviceBuffer<float> x(*backend, size_t(n) * kCifarPixels);
    std::vector<double> z(size_t(n) * O, 0.0);
    std::vector<float> logits(size_t(n) * O);
    struct View { int s; bool flip; double w; };
    for (const View& v : {View{0, false, .25}, View{0, true, .25}, View{-1, false, .125}, View{-1, true, .125},
                          View{1, false, .125}, View{1, true, .125}}) {
        const std::vector<float> xv = host_view(direct, n, cr, v.s, v.s, v.flip);
        backend->upload(x.get(), xv.data(), xv.size() * sizeof(float));
        backend->download(logits.data(), ws.forward(x.get(), false), logits.size() * sizeof(float));
        for (size_t k = 0; k < z.size(); ++k) z[k] += v.w * logits[k];
    }
    std::vector<float> want(z.size());
    for (int i = 0; i < n; ++i) {
        double mx = -1e300, sum = 0;
        for (int o = 0; o < O; ++o) mx = std::max(mx, z[size_t(i) * O + o]);
        for (int o = 0; o < O; ++o) sum += std::exp(z[size_t(i) * O + o] - mx);
        for (int o = 0; o < O; ++o) want[size_t(i) * O + o] = float(std::exp(z[size_t(i) * O + o] - mx) / sum);
        const auto arg = [&](const float* q) { return int(std::max_element(q, q + O) - q); };
        EXPECT_EQ(arg(&p[size_t(i) * O]), arg(&want[size_t(i) * O])) << "image " << i;
    }
    // the same passes in another order: fp32 rounding only
    EXPECT_TRUE(test::all_close(p, want, 1e-6, 1e-5));

    // the program: two good files and a text file named .png -> the good ones classified, the bad
    // one named, exit status 1
    const std::string bad = (dir / "bad.png").string(), log = (dir / "predict.log").string();
    std::ofstream(bad) << "not an image\n";
    const std::string cmd = std::string("'") + SPEEDRUN_BINARY + "' predict --device cpu --threads 2 --top 2 --checkpoint '" +
                            ckpt + "' '" + files[0] + "' '" + bad + "' '" + files[1] + "' > '" + log + "' 2>&1";
    const int st = std::system(cmd.c_str());
    ASSERT_TRUE(WIFEXITED(st)) << cmd;
    EXPECT_EQ(WEXITSTATUS(st), 1) << cmd;
    std::stringstream out;
    out << std::ifstream(log).rdbuf();
    const std::string text = out.str();
    EXPECT_NE(text.find(bad + ": not a PNG file"), std::string::npos) << text;
    for (int i = 0; i < 2; ++i) {
        const float* q = &p[size_t(i) * O];
        const int best = int(std::max_element(q, q + O) - q);
        const std::string line = files[size_t(i)];
        const size_t at = text.find(line + " ");
        ASSERT_NE(at, std::string::npos) << text;
        const std::string row = text.substr(at, text.find('\n', at) - at);
        EXPECT_NE(row.find(kCifarClassNames[best]), std::string::npos) << row;
        EXPECT_NE(row.find(fmt::format("{:.4f}", q[best])), std::string::npos) << row;
    }
    fs::remove_all(dir);
}

}  // namespace
}  // namespace sr
