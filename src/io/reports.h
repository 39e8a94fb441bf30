// reports.h: the files this field's users read: DAWNBench's logs.tsv, an epoch-vs-accuracy plot
// (gnuplot), and a network diagram (graphviz dot).
#pragma once
#include <string>
#include <vector>

#include "train/trainer.h"

namespace sr {

// DAWNBench logs.tsv: "epoch\thours\ttop1Accuracy", one row per epoch, hours = the timed region
// so far (preprocessing and whitening included, validation excluded), accuracy in percent.
std::string dawnbench_tsv(const RunResult& run);

// Writes a PNG of test accuracy (and train loss, on a second axis) against epoch, one line per
// run, through gnuplot. Throws sr::Error if gnuplot is missing or fails.
void plot_runs(const std::string& png_path, const std::vector<RunResult>& runs, const std::string& title);

// Graphviz dot text of the network (layers with output shapes), and an SVG through `dot`.
std::string network_dot(const NetConfig& c);
void write_svg(const std::string& svg_path, const std::string& dot);

}  // namespace sr
