// recipe.h: a training recipe as plain data. Presets are JSON files in presets/ (compiled into
// the binary); --config FILE.json is merged over the preset (RFC 7386 merge patch), then single
// flags over that. No code branches on a preset's name.
#pragma once
#include <array>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/network.h"

namespace sr {

struct Recipe {
    std::string name, description, source, published;
    std::array<float, 3> mean{}, std{};
    NetConfig net;
    // optimizer: "sgd" = airbench94's Nesterov SGD for every group, hyperparameters in airbench's
    // decoupled form (lr, weight_decay per 1024 examples; BN biases at lr * bias_scaler);
    // "muon" = the Muon recipes (airbench94_muon, hiverge): Muon (below) for the conv filters,
    // Nesterov SGD for the whitening bias, BN biases (bias_lr) and the head (head_lr), in
    // PyTorch's form: weight_decay = wd / group lr, so each step decays by wd * lr multiplier.
    // "nesterov" = cifar10-fast(-simple)'s Nesterov SGD, the lr inside the velocity (ops/backend.h
    // sgd_nesterov_velocity), lr and weight_decay used as given: the weights at lr, the BN biases
    // (and scales) at lr * bias_scaler with bias_weight_decay.
    std::string optimizer = "sgd";
    double epochs = 9.9;
    int batch_size = 1024;
    // true: an epoch is n / batch full batches, the last n % batch images of its shuffled order
    // unused (airbench, cifar10-fast's dawn.py); false: one more, smaller step on them, as the
    // DataLoader of cifar10-fast's experiments notebook (drop_last=False); steps per epoch and
    // the epoch-based schedule then count that step
    bool drop_last = true;
    double lr = 11.5, momentum = 0.85, weight_decay = 0.0153, bias_scaler = 64.0;
    double bias_lr = 0.053, head_lr = 0.67, wd = 0.0;  // "muon" only
    double bias_weight_decay = 0.0;                      // "nesterov" only
    // "nesterov" only: false = PyTorch's SGD form (buf = m buf + g'; p -= lr (g' + m buf)), as
    // cifar10-fast's DAWNBench code (torch.optim.SGD) uses
    bool lr_in_velocity = true;
    float label_smoothing = 0.2f;
    // the whitening bias trains for ceil(whiten_bias_epochs * steps_per_epoch) steps; with
    // "muon" its lr decays linearly to 0 over those steps (as both Muon peers do)
    double whiten_bias_epochs = 3;
    // Muon (Newton-Schulz orthogonalised momentum) for every conv filter, as a (C_out, rest)
    // matrix: buf = m buf + g; u = nesterov ? g + m buf : buf; X = u scaled to norm magnitude
    // (linear from magnitude[0] to [1] over the run, when given) and then to norm 1 (eps added
    // to each norm); `steps` quintic iterations X = a X + (b A + c A^2) X, A = X X^T; every
    // renorm_base + int(renorm_growth * progress) steps the weights are first rescaled to norm
    // sqrt(C_out) (renorm_eps added to the norm); p -= lr X; p *= 1 - lr weight_decay.
    struct Muon {
        double lr = 0.24, momentum = 0.6;
        bool nesterov = true;
        std::array<double, 3> coeffs = {3.4445, -4.7750, 2.0315};
        int steps = 3;
        double eps = 1e-7;
        std::vector<double> magnitude;  // empty, or [start, end]
        int renorm_base = 1;
        double renorm_growth = 0.0, renorm_eps = 0.0;
        double weight_decay = 0.0;
    } muon;
    // piecewise-linear lr multiplier: start -> peak over warmup_frac of the steps, -> end
    double warmup_frac = 0.23, lr_start = 0.2, lr_peak = 1.0, lr_end = 0.07;
    // or, when knots are given: the multiplier at position x of the step (0-based) is linear
    // between the knots [x, multiplier], constant outside them; x = step + knots_offset, in
    // steps or in epochs (x / steps per epoch) as knots_unit says
    std::vector<std::array<double, 2>> knots;
    std::string knots_unit = "step";
    int knots_offset = 0;
    // lookahead: every k steps, decay = base^k * (step / total)^power. With start_epoch > 0
    // (hlb-CIFAR10's EMA), the events of earlier epochs are skipped and the first event of epoch
    // start_epoch or later only copies the weights into the lookahead state (no update).
    int lookahead_every = 5;
    double lookahead_base = 0.95, lookahead_power = 3.0;
    int lookahead_start_epoch = 0;
    // EMA of every tensor (weights, BN statistics) for evaluation, as cifar10-fast-simple's
    // validation model: every `every` steps of an epoch (its steps 0, every, 2 every, ...)
    // ema = decay ema + (1 - decay) params, starting from the initial (whitened) weights; the
    // training weights are left alone, evaluation uses the EMA, and the run ends with it.
    int ema_every = 0;  // 0 = off
    double ema_decay = 0.0;
    int whiten_images = 5000;
    double whiten_eps = 5e-4;
    // centred patch covariance divided by (patches - 1), as torch.cov (hlb-CIFAR10); false: the
    // airbench form (uncentred, / patches; resnet9: / (patches - 1))
    bool whiten_center = false;
    // eigen-decompose the covariance of `splits` equal parts of the whitening images and average
    // the eigenvalues and the eigenvectors, as hlb-CIFAR10's whiten_splits. One difference, kept
    // on purpose: each part's eigenvectors are first given the first part's signs. hlb averages
    // them as its eigh returns them, and an eigenvector's sign is the solver's arbitrary choice:
    // there, its few smallest-eigenvalue (highest-gain) directions, whose signs differ between
    // parts, are shrunk by a factor that depends on the solver and the run (0.07-0.8 on the CPU's
    // LAPACK, session 38's review); here by 0.5-1, the same on every solver.
    int whiten_splits = 1;
    bool flip = true;  // alternating flip: random half at the start, then every image each epoch
    // "alternating" (above), "half": a fresh random half of the images each epoch, or "random":
    // each image with probability 1/2, drawn afresh each epoch
    std::string flip_mode = "alternating";
    int translate = 2;
    // crop offsets: "image" = each image its own, uniform in [-translate, translate];
    // "image_randint" = each image its own, in [-translate, translate - 1] (hlb-CIFAR10's random
    // square masks never reach +translate); "batch" = one per batch for all its images, as
    // cifar10-fast-simple (randint(2 translate): in [-translate, translate - 1])
    std::string crop = "image";
    // cutout (cifar10-fast): a cutout x cutout square of each training image := 0 (the mean, after
    // normalisation), its corner uniform over the positions inside the crop, drawn each epoch,
    // after crop and flip; 0 = off
    int cutout = 0;
    // cutmix (hlb-CIFAR10): from epoch cutmix_from_epoch on (epochs e >= it), a cutmix x cutmix
    // square of each training image := the same square of another training image (a random
    // permutation of the whole set), cropped and flipped as that image is this epoch, after crop
    // and flip (and cutout, colour jitter: the partner gets neither); its corner uniform over
    // hlb's positions (make_random_square_masks: side - size + 1 per axis, one fewer for an even
    // size); the target mixes the two labels by area (size^2 / 32^2). 0 = off
    int cutmix = 0;
    double cutmix_from_epoch = 0;
    // colour jitter per image and epoch, after crop and flip (hiverge): x = (x + U(-brightness,
    // brightness)) * (1 + U(-contrast, contrast)) on the normalised image; 0 = off
    double brightness = 0, contrast = 0;
    int tta_level = 2;
    // TTA view weights at level 2: "airbench" = 0.5 mean(id, flip) + 0.5 mean of the two 1-pixel
    // translations' mean(view, flip); "equal" = the mean of those six views (hiverge)
    std::string tta_weights = "airbench";
    // selective TTA (hiverge): only this fraction of test images, the least confident under the
    // plain view (max softmax), get the TTA views; the rest keep the plain logits. 0 = all.
    double tta_select = 0;

    nlohmann::json json;  // the resolved recipe, as loaded (for logs and summaries)
};

// One test-time view: shift (sy, sx) in pixels of the 1-reflect-padded image, mirror, weight.
struct TtaView {
    int sy, sx, flip;
    float w;
};
// The views of TTA level `level` under the recipe's eval.tta_weights (the logits are their
// weighted sum). Used by evaluation and by `predict`, so both see the same views.
std::vector<TtaView> tta_views(const Recipe& r, int level);
// How many of n test images get the TTA views: n, or with selective TTA the least confident share.
int tta_selected(const Recipe& r, int n);
// Image forwards of the final evaluation of n test images in batches of b, as Trainer::evaluate
// makes them: every batch full (the last overlaps the one before it; so b <= n), and selective
// TTA's chosen images padded to at least one batch.
long eval_forwards(const Recipe& r, int n, int b);
// What a run of the recipe on n_train images should be told before it trains when what it ends
// with is not what it trained (a short run): the lookahead's final copy drops all of its steps
// or 10% or more (optim/schedule.h lookahead_dropped_steps), or the EMA it ends with still holds
// 10% or more of the initial weights (ema_updates); "" otherwise.
std::string short_run_note(const Recipe& r, int n_train);
// The evaluation batch for n test images: of the sizes from half the training batch up to it
// (at most n), the one whose final evaluation makes the fewest forwards, the largest of equals;
// but the training batch itself (min(batch, n)) where it makes at most kEvalBatchSaving more,
// so that the training workspace serves evaluation. hiverge (batch 1536, TTA for the 2,500 least
// confident): 1250, 25,000 forwards as the peer's batches of 2,000, where 1536 made 29,184;
// airbench94 (1024): 1024, 61,440 forwards, 2.4% more than batches of 1000 make.
constexpr double kEvalBatchSaving = 0.05;
int eval_batch_size(const Recipe& r, int n, int batch);

const char* activation_name(Activation a);

// Names of the built-in presets, and the JSON of one (throws sr::Error on an unknown name).
std::vector<std::string> preset_names();
// Every key a recipe may have, by section (docs/recipe-keys.md describes each).
const std::map<std::string, std::vector<std::string>>& recipe_keys();
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
