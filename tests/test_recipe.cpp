// test_recipe.cpp: the airbench94 preset's numbers and everything derived from them (steps,
// schedule, optimizer hyperparameters, lookahead decay), and config validation.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "optim/optimizer.h"
#include "optim/schedule.h"
#include "train/recipe.h"
#include "core/error.h"
#include "test_util.h"

namespace sr {
namespace {

TEST(Recipe, Airbench94DerivedQuantities) {
    const Recipe r = load_recipe("airbench94", "");
    EXPECT_EQ(r.batch_size, 1024);
    EXPECT_TRUE(r.drop_last);
    EXPECT_EQ(steps_per_epoch(50000, r.batch_size, r.drop_last), 48);
    EXPECT_EQ(total_steps(50000, r.batch_size, r.epochs, r.drop_last), 476);  // ceil(48 * 9.9)
    EXPECT_EQ(images_in_run(50000, r.batch_size, r.epochs, r.drop_last), 476 * 1024);
    // LambdaLR: step 0 uses 0.2; warm-up int(0.23 * 476) = 109 steps to 1.0; then to 0.07
    EXPECT_DOUBLE_EQ(lr_multiplier(0, 476, 0.23, 0.2, 1.0, 0.07), 0.2);
    EXPECT_NEAR(lr_multiplier(54, 476, 0.23, 0.2, 1.0, 0.07), 0.2 + 0.8 * 54 / 109.0, 1e-12);
    EXPECT_DOUBLE_EQ(lr_multiplier(109, 476, 0.23, 0.2, 1.0, 0.07), 1.0);
    EXPECT_NEAR(lr_multiplier(475, 476, 0.23, 0.2, 1.0, 0.07), 1.0 - 0.93 * 366 / 367.0, 1e-12);
    const SgdHyper h = sgd_hyper(r);
    const double kilostep = 1024 * (1 + 1 / (1 - 0.85));
    EXPECT_NEAR(h.lr, 11.5 / kilostep, 1e-12);
    EXPECT_NEAR(h.wd * h.lr, 0.0153 * 1024 / kilostep, 1e-12);
    EXPECT_NEAR(h.lr_bias, 64 * h.lr, 1e-12);
    EXPECT_NEAR(h.wd_bias * h.lr_bias, h.wd * h.lr, 1e-12);  // the same effective decay
    EXPECT_NEAR(lookahead_decay(5, 476, 5, 0.95, 3), std::pow(0.95, 5) * std::pow(5 / 476.0, 3), 1e-15);
    EXPECT_NEAR(r.net.bn_momentum, 0.4f, 1e-7);  // airbench's 0.6 is 1 - PyTorch momentum
    EXPECT_EQ(r.tta_level, 2);
}

// The lookahead's final copy keeps the weights of the last multiple of its period: a run's later
// steps are dropped (the peers do the same); a short run is told when that is a real share.
TEST(Recipe, LookaheadDroppedStepsAreSaid) {
    EXPECT_EQ(lookahead_dropped_steps(476, 0, 5), 1);  // airbench94: its last step, as airbench94.py
    EXPECT_EQ(lookahead_dropped_steps(581, 100, 5), 1);  // hlb
    EXPECT_EQ(lookahead_dropped_steps(4, 0, 5), 4);    // nothing trained is kept
    EXPECT_EQ(lookahead_dropped_steps(50, 100, 5), 0);  // ends before a late start: no lookahead
    EXPECT_EQ(lookahead_dropped_steps(10, 0, 0), 0);    // none
    Recipe r = load_recipe("airbench94", "");
    EXPECT_EQ(short_run_note(r, 50000), "");  // a full run: 1 of 476
    r.batch_size = 256;
    r.epochs = 2;  // 8 steps of 1024 images: 3 dropped
    EXPECT_TRUE(test::contains(short_run_note(r, 1024), "the last 3 of the run's 8 steps"));
    r.epochs = 1;  // 4 steps: none kept
    EXPECT_TRUE(test::contains(short_run_note(r, 1024), "its final weights are the initial ones"));
    r.epochs = 2.5;  // 10 steps: none dropped
    EXPECT_EQ(short_run_note(r, 1024), "");
}

// An EMA (tricks10: every 5 steps of an epoch, decay 0.951) starts from the initial network: a
// short run that ends with it is mostly untrained, and is told so.
TEST(Recipe, ShortRunsEndingWithAMostlyInitialEmaAreSaid) {
    EXPECT_EQ(ema_updates(970, 97, 5), 200);  // tricks10's full run: 20 a epoch (steps 0, 5, ..., 95)
    EXPECT_EQ(ema_updates(10, 4, 5), 3);      // epochs of 4 steps: step 0 of each, 2 full + 1
    EXPECT_EQ(ema_updates(6, 6, 5), 2);       // steps 0 and 5
    EXPECT_EQ(ema_updates(5, 6, 5), 1);       // (a partial epoch: step 0 only)
    EXPECT_EQ(ema_updates(10, 4, 0), 0);
    Recipe r = load_recipe("tricks10", "");
    ASSERT_GT(r.ema_every, 0);
    EXPECT_EQ(short_run_note(r, 50000), "");  // 0.951^200: nothing of the initial weights left
    r.epochs = 1;
    r.batch_size = 512;  // 10 steps of 5120 images: 2 updates, 90% initial
    EXPECT_TRUE(test::contains(short_run_note(r, 5120), "2 updates in its 10 steps) still holds 90% of the initial"));
    r.epochs = 4;  // 40 steps, 8 updates: 67%
    EXPECT_TRUE(test::contains(short_run_note(r, 5120), "holds 67%"));
    r.epochs = 23;  // 230 steps, 46 updates: 9.9%
    EXPECT_EQ(short_run_note(r, 5120), "");
}

// The evaluation batch makes the final evaluation's forwards as few as the peers' (every batch
// is full, so a size that does not divide the test set pays for the overlap).
TEST(Recipe, EvalBatchMakesTheFewestForwards) {
    const Recipe a = load_recipe("airbench94", ""), h = load_recipe("hiverge", "");
    // airbench94: 6 views; batches of 1024 make 10,240 forwards a view, 1000 would make 10,000:
    // 2.4% fewer, not worth a second workspace, so the training batch's serves
    EXPECT_EQ(eval_forwards(a, 10000, 1024), 61440);
    EXPECT_EQ(eval_forwards(a, 10000, 1000), 60000);
    EXPECT_EQ(eval_batch_size(a, 10000, 1024), 1024);
    // 10,000 in batches of 1280 (8 x 1280 = 10,240; 1250 makes 10,000) the same; in batches of
    // 1400 (8 x 1400 = 11,200) the saving is 11%, so 1250
    EXPECT_EQ(eval_batch_size(a, 10000, 1280), 1280);
    EXPECT_EQ(eval_batch_size(a, 10000, 1400), 1250);
    // hiverge: a plain pass, then 6 views of the 2,500 least confident; batches of its training
    // batch 1536 made 7 x 1536 + 2 x 1536 x 6 = 29,184, the peer 10,000 + 2,500 x 6 = 25,000
    ASSERT_EQ(h.batch_size, 1536);
    EXPECT_EQ(tta_selected(h, 10000), 2500);
    EXPECT_EQ(eval_forwards(h, 10000, 1536), 29184);
    EXPECT_EQ(eval_batch_size(h, 10000, 1536), 1250);
    EXPECT_EQ(eval_forwards(h, 10000, 1250), 25000);
    // a test set smaller than the batch is one batch; one a little larger two of half its size
    // (where two full batches would make 2,048 forwards a view)
    EXPECT_EQ(eval_batch_size(a, 256, 1024), 256);
    EXPECT_EQ(eval_batch_size(a, 1100, 1024), 550);
    EXPECT_EQ(eval_forwards(a, 1100, 550), 6 * 1100);
    // a prime one: 1,024 a view in batches of 512, 1,010 in batches of 505 (1.4%)
    EXPECT_EQ(eval_forwards(a, 1009, 505), 6 * 1010);
    EXPECT_EQ(eval_batch_size(a, 1009, 512), 512);
    // no size below half the training batch (tiny batches run slowly)
    EXPECT_GE(eval_batch_size(a, 1031, 1024), 512);
    // selective TTA with too few images to select any: the plain pass alone
    Recipe few = h;
    few.tta_select = 1e-9;
    EXPECT_EQ(tta_selected(few, 600), 0);
    EXPECT_EQ(eval_forwards(few, 600, 200), 600);
    // TTA level 0: one view, every image
    Recipe plain = a;
    plain.tta_level = 0;
    EXPECT_EQ(tta_selected(plain, 10000), 10000);
    EXPECT_EQ(eval_forwards(plain, 10000, 1000), 10000);
}

TEST(Recipe, ConfigErrorsNameTheKey) {
    auto j = preset_json("airbench94");
    j["opt"]["epochs"] = -1;
    EXPECT_TRUE(test::contains(test::error_of([&] { recipe_from_json(j); }), "opt.epochs"));
    j = preset_json("airbench94");
    j["opt"]["lerning_rate"] = 1;
    EXPECT_TRUE(test::contains(test::error_of([&] { recipe_from_json(j); }), "opt.lerning_rate"));
    EXPECT_THROW(preset_json("no-such-preset"), Error);
    EXPECT_THROW(load_recipe("airbench94", "/nonexistent/config.json"), Error);
}

// --config FILE: a JSON merge patch over the preset (RFC 7386): the keys it names change, every
// other key keeps the preset's value, null removes a key (its default applies). A file that is
// not JSON, a value of the wrong type (saying which type it must be) and an unknown key are
// errors naming the file and the key.
TEST(Recipe, ConfigFileIsMergedOverThePreset) {
    const std::string path = test::temp_path("config.json").string();
    auto write = [&](const std::string& text) { std::ofstream(path) << text; };
    // the error that loading the preset with this config file gives
    auto error_for = [&](const std::string& text) {
        write(text);
        return test::error_of([&] { load_recipe("airbench94", path); });
    };
    // JSON that says one key twice (which one counts is left open), or nests without end
    EXPECT_TRUE(test::contains(error_for(R"({"opt": {"lr": 9.0, "lr": 12.0}})"), "the key 'lr' appears twice"));
    EXPECT_TRUE(test::contains(error_for("{\"opt\": " + std::string(100000, '[') + std::string(100000, ']') + "}"),
                               "nested deeper than 32 levels"));
    write(R"({"opt": {"lr": 9.0, "epochs": 5}, "net": {"widths": [32, 64, 64]},
              "eval": {"tta_level": null}})");
    const Recipe base = load_recipe("airbench94", ""), r = load_recipe("airbench94", path);
    EXPECT_DOUBLE_EQ(r.lr, 9.0);
    EXPECT_DOUBLE_EQ(r.epochs, 5.0);
    EXPECT_EQ(r.net.widths, (std::vector<int>{32, 64, 64}));
    EXPECT_DOUBLE_EQ(r.momentum, base.momentum);  // a sibling of the patched keys
    EXPECT_EQ(r.batch_size, base.batch_size);
    EXPECT_EQ(r.net.whiten_kernel, base.net.whiten_kernel);
    EXPECT_EQ(r.json.at("eval").count("tta_level"), 0u);
    EXPECT_EQ(r.tta_level, Recipe().tta_level);  // the default, as if the preset had no value

    std::string why = error_for(R"({"opt": {"lr": 9.0,}})");
    EXPECT_TRUE(test::contains(why, path)) << why;
    EXPECT_TRUE(test::contains(why, "not valid JSON")) << why;
    // a NUL byte ended the parser's input: what followed went unread
    why = error_for(std::string(R"({"opt": {}})") + '\0' + R"({"opt": {"lr": "fast"}})");
    EXPECT_TRUE(test::contains(why, "not valid JSON (a NUL byte at offset 11)")) << why;
    // a file without end (or far too large) is not read whole
    if (std::filesystem::exists("/dev/zero")) {
        why = test::error_of([] { load_recipe("airbench94", "/dev/zero"); });
        EXPECT_TRUE(test::contains(why, "/dev/zero: larger than 16 MiB, not a config file")) << why;
    }
    why = error_for(R"({"opt": {"lr": "fast"}})");
    EXPECT_TRUE(test::contains(why, path + " (merged over preset airbench94)")) << why;
    EXPECT_TRUE(test::contains(why, "'opt.lr' must be a number (got \"fast\")")) << why;
    why = error_for(R"({"aug": {"fliip": true}})");
    EXPECT_TRUE(test::contains(why, path)) << why;
    EXPECT_TRUE(test::contains(why, "aug.fliip")) << why;
    // a near miss names the key meant: a typo within the section, the right key in another
    // section, a mistyped section; a name nothing resembles gets no guess
    EXPECT_TRUE(test::contains(why, "did you mean 'aug.flip'?")) << why;
    EXPECT_TRUE(test::contains(why, "docs/recipe-keys.md")) << why;
    // a config file and a part of the error it must give
    const std::pair<const char*, const char*> cases[] = {
        {R"({"opt": {"tta_level": 1}})", "unknown key 'opt.tta_level'; did you mean 'eval.tta_level'?"},
        {R"({"aug": {"lr": 1}})", "did you mean 'muon.lr' or 'opt.lr'?"},
        {R"({"opt": {"bn_momentum": 0.6}})", "did you mean 'net.bn_momentum'?"},
        {R"({"shedule": {"peak": 0.2}})", "unknown section 'shedule'; did you mean 'schedule'?"},
        // a key without its section (--set lr=0.1)
        {R"({"lr": 0.1})", "'lr' is a key without its section; did you mean 'muon.lr' or 'opt.lr'?"},
        {R"({"batch_size": 512})", "'batch_size' is a key without its section; did you mean 'opt.batch_size'?"},
        {R"({"opt": {"zzzzzz": 1}})", "unknown key 'opt.zzzzzz' (every key"},
        // an integer key takes 256 or 256.0 (below), but not 1.5 (JSON's conversion makes it 1)
        {R"({"opt": {"batch_size": 1.5}})", "'opt.batch_size' must be an integer (got 1.5)"},
        {R"({"net": {"widths": [16, 32.5, 32]}})", "'net.widths' must be a list of integers"},
        {R"({"opt": {"lr": true}})", "'opt.lr' must be a number (got true)"},
        {R"({"aug": {"flip": "no"}})", "'aug.flip' must be true or false (got \"no\")"},
        // 2^32 + 1024: read as an int, 1024
        {R"({"opt": {"batch_size": 4294968320}})", "'opt.batch_size' must be an integer"},
        // the 4th would be ignored
        {R"({"data": {"mean": [0.5, 0.5, 0.5, 9]}})", "'data.mean' must be a list of 3 numbers"},
        {R"({"schedule": {"knots": [[0, 1], [5, 1, 7]]}})", "'schedule.knots' must be a list of [x, y] pairs"},
        {R"({"name": 5})", "'name' must be a string (got 5)"},
    };
    for (const auto& [config, text] : cases) {
        why = error_for(config);
        EXPECT_TRUE(test::contains(why, text)) << config << ": " << why;
    }
    write(R"({"opt": {"batch_size": 256.0}, "net": {"widths": [16, 32.0, 32]}})");
    EXPECT_EQ(load_recipe("airbench94", path).batch_size, 256);
    write("[1, 2]");
    why = test::error_of([&] { load_recipe("airbench94", path); });
    EXPECT_TRUE(test::contains(why, path + ": a config file must be a JSON object")) << why;
    std::filesystem::remove(path);
    std::filesystem::create_directories(path);
    why = test::error_of([&] { load_recipe("airbench94", path); });
    EXPECT_TRUE(test::contains(why, path + ": is a directory")) << why;
    std::filesystem::remove(path);
}

// docs/recipe-keys.md is the user's reference of the recipe: it must name every key the reader
// accepts, as `section.key`, in a table row of its own.
TEST(Recipe, EveryKeyIsDescribedInTheDocs) {
    std::ifstream f(std::string(SPEEDRUN_SOURCE_DIR) + "/docs/recipe-keys.md");
    ASSERT_TRUE(f) << "docs/recipe-keys.md is missing";
    const std::string doc((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    int keys = 0;
    for (const auto& [section, names] : recipe_keys())
        for (const auto& name : names) {
            ++keys;
            EXPECT_TRUE(test::contains(doc, "| `" + section + "." + name + "` |"))
                << section << "." << name << " is not described in docs/recipe-keys.md";
        }
    EXPECT_GT(keys, 70);
}

TEST(Recipe, OverridesApply) {
    auto j = preset_json("airbench94");
    apply_override(j, "opt.lr=10.5");
    apply_override(j, "net.widths=[32,64,64]");
    const Recipe r = recipe_from_json(j);
    EXPECT_DOUBLE_EQ(r.lr, 10.5);
    EXPECT_EQ(r.net.widths[1], 64);
    EXPECT_THROW(apply_override(j, "novalue"), Error);
    // null removes the key, so that its default applies (as in a --config file)
    apply_override(j, "eval.tta_level=null");
    EXPECT_EQ(j.at("eval").count("tta_level"), 0u);
    EXPECT_EQ(recipe_from_json(j).tta_level, Recipe().tta_level);
    apply_override(j, "eval.tta_level=null");  // a key that is not there: nothing to remove
    EXPECT_EQ(recipe_from_json(j).tta_level, Recipe().tta_level);
    // a list's index past its end would fill the gap with nulls (gigabytes for a large one)
    apply_override(j, "net.widths.3=8");  // (one past the end appends)
    EXPECT_EQ(j["net"]["widths"].size(), 4u);
    EXPECT_TRUE(test::contains(test::error_of([&] { apply_override(j, "net.widths.30000000=1"); }),
                               "--set net.widths.30000000: '30000000' is not an index of that list of 4 values"));
    EXPECT_EQ(j["net"]["widths"].size(), 4u);
    // a value nested past the limit; JSON's own errors name the flag
    EXPECT_TRUE(test::contains(test::error_of([&] { apply_override(j, "opt.lr=" + std::string(50000, '[') + std::string(50000, ']')); }),
                               "--set opt.lr: nested deeper than 32 levels"));
    EXPECT_TRUE(test::contains(test::error_of([&] { apply_override(j, "opt.lr.x=1"); }), "--set opt.lr.x: "));
    // an error message shows a long value's start and what it is, not all of it
    auto k = preset_json("airbench94");
    apply_override(k, "opt.lr=[" + std::string(4000, '1') + "]");
    const std::string msg = test::error_of([&] { recipe_from_json(k); });
    EXPECT_LT(msg.size(), 300u) << msg.substr(0, 300);
}

}  // namespace
}  // namespace sr

namespace sr {
namespace {
TEST(Recipe, ToJsonRoundTripsTheResolvedValues) {
    Recipe r = load_recipe("airbench94", "");
    r.net.widths = {8, 16, 32};  // changed in the struct, not in r.json
    r.lr = 3.25;
    r.tta_level = 1;
    const Recipe back = recipe_from_json(recipe_to_json(r));
    EXPECT_EQ(back.net.widths, r.net.widths);
    EXPECT_DOUBLE_EQ(back.lr, 3.25);
    EXPECT_EQ(back.tta_level, 1);
    EXPECT_EQ(recipe_to_json(back), recipe_to_json(r));
    // numbers held as floats are written as the preset has them (was 9.999999960041972e-13), and
    // read back to the same floats
    const nlohmann::json j = recipe_to_json(r);
    EXPECT_EQ(j["net"]["bn_eps"].dump(), "1e-12");
    EXPECT_EQ(j["data"]["mean"][0].dump(), "0.4914");
    EXPECT_EQ(j["net"]["bn_momentum"].dump(), "0.4");
    EXPECT_EQ(j["opt"]["lr"].dump(), "3.25");
    EXPECT_EQ(back.net.bn_eps, r.net.bn_eps);
    EXPECT_EQ(back.mean, r.mean);
    EXPECT_EQ(back.label_smoothing, r.label_smoothing);
    // doubles are written as they are: one that is not a float's value, and one that is (float
    // 0.1 as a double, as NumPy prints it), which must not become 0.1
    Recipe d = r;
    d.lr = 0.1;
    EXPECT_EQ(recipe_to_json(d)["opt"]["lr"].dump(), "0.1");
    d.lr = double(0.1f);
    EXPECT_EQ(recipe_from_json(recipe_to_json(d)).lr, double(0.1f));
    d.epochs = double(1.1f);
    EXPECT_EQ(recipe_from_json(recipe_to_json(d)).epochs, double(1.1f));
}
}  // namespace
}  // namespace sr

namespace sr {
namespace {
// Every built-in preset: valid, cited, and stable through the JSON a checkpoint stores.
TEST(Recipe, EveryPresetLoadsAndRoundTrips) {
    const auto names = preset_names();
    for (const char* want : {"airbench94", "airbench95", "muon94", "hiverge"})
        EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want;
    for (const auto& n : names) {
        SCOPED_TRACE(n);
        const Recipe r = load_recipe(n, "");
        EXPECT_EQ(r.name, n);
        EXPECT_FALSE(r.source.empty());
        EXPECT_FALSE(r.published.empty());
        const Recipe back = recipe_from_json(recipe_to_json(r));
        EXPECT_EQ(recipe_to_json(back), recipe_to_json(r));
    }
    // the numbers that differ between the Muon peers, as their code has them
    const Recipe h = load_recipe("hiverge", "");
    EXPECT_EQ(h.optimizer, "muon");
    EXPECT_EQ(h.net.act, Activation::silu);
    EXPECT_EQ(total_steps(50000, h.batch_size, h.epochs, h.drop_last), 243);  // ceil(7.59 * 32)
    EXPECT_EQ(int(std::ceil(32 * h.whiten_bias_epochs)), 7);     // ceil(0.19 * 32)
    EXPECT_NEAR(h.wd, 1.0418e-6 * 1536, 1e-12);
    const Recipe m = load_recipe("muon94", "");
    EXPECT_EQ(total_steps(50000, m.batch_size, m.epochs, m.drop_last), 200);
    EXPECT_EQ(m.lookahead_every, 0);
    EXPECT_TRUE(m.muon.magnitude.empty());
}

// Each "key.path=value" override of the preset must be refused with an error naming the key.
void expect_refused(const char* preset, std::initializer_list<const char*> overrides) {
    for (const char* bad : overrides) {
        SCOPED_TRACE(bad);
        nlohmann::json j = preset_json(preset);
        apply_override(j, bad);
        const std::string key = std::string(bad).substr(0, std::string(bad).find('='));
        EXPECT_TRUE(test::contains(test::error_of([&] { recipe_from_json(j); }), key));
    }
}

TEST(Recipe, MuonConfigErrorsNameTheKey) {
    expect_refused("hiverge", {"opt.optimizer=adam", "net.act=relu", "muon.steps=0", "muon.magnitude=[1]",
                               "eval.tta_select=2", "eval.tta_weights=median", "aug.contrast=-1"});
}

// The Myrtle presets train on the last partial batch of each epoch, as the notebook's DataLoader
// (drop_last=False): 50,000 = 390 x 128 + 80 = 97 x 512 + 336 = 65 x 768 + 80. page24 (dawn.py)
// drops it.
TEST(Recipe, MyrtleEpochsKeepTheLastPartialBatch) {
    const struct { const char* name; int spe, total; } cases[] = {
        {"myrtle-baseline", 391, 391 * 35}, {"myrtle-bs512", 98, 98 * 35}, {"myrtle-reg", 66, 66 * 30}};
    for (const auto& c : cases) {
        SCOPED_TRACE(c.name);
        const Recipe r = load_recipe(c.name, "");
        EXPECT_FALSE(r.drop_last);
        EXPECT_EQ(steps_per_epoch(50000, r.batch_size, r.drop_last), c.spe);
        EXPECT_EQ(total_steps(50000, r.batch_size, r.epochs, r.drop_last), c.total);
        EXPECT_EQ(images_in_run(50000, r.batch_size, r.epochs, r.drop_last), 50000L * long(r.epochs));
        EXPECT_EQ(images_in_steps(c.spe - 1, 50000, r.batch_size), long(c.spe - 1) * r.batch_size);
        EXPECT_EQ(images_in_steps(c.spe, 50000, r.batch_size), 50000);
    }
    const Recipe p = load_recipe("page24", "");
    EXPECT_TRUE(p.drop_last);
    EXPECT_EQ(total_steps(50000, p.batch_size, p.epochs, p.drop_last), 97 * 24);
    EXPECT_EQ(images_in_run(50000, p.batch_size, p.epochs, p.drop_last), 97L * 512 * 24);
    // a fractional last epoch: airbench94's 9.9 epochs with the partial batch kept: 49 steps an
    // epoch, ceil(49 * 9.9) = 486 steps = 9 whole epochs and 45 full batches of the tenth
    EXPECT_EQ(total_steps(50000, 1024, 9.9, false), 486);
    EXPECT_EQ(images_in_run(50000, 1024, 9.9, false), 9 * 50000L + 45 * 1024L);
    {  // cutmix's partners come from the whole set, so the last, smaller batch has them too
        nlohmann::json j = preset_json("myrtle-reg");
        apply_override(j, "aug.cutmix=8");
        EXPECT_EQ(recipe_from_json(j).cutmix, 8);
    }
    expect_refused("tricks10", {"opt.drop_last=false"});  // ghost BN splits of a partial batch
}

// The dawn network's keys (myrtle presets), and hlb's init with 3 convs: errors name the key.
TEST(Recipe, DawnConfigErrorsNameTheKey) {
    expect_refused("myrtle-reg", {"net.bn_scale_init=gaussian", "net.whiten_kernel=3", "net.widths=[64,128,256]",
                                  "net.ghost_splits=2", "net.arch=densenet", "net.dirac=identity_added",
                                  "net.bn_train_scale=false"});  // (a frozen scale cannot start uniform)
    expect_refused("hlb", {"net.group_convs=3"});  // identity-added init is written for 2 convs a group
}
}  // namespace
}  // namespace sr
