#include "runtime/golden.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>

#include "cpu/cpu_backend.h"
#include "model/model.h"
#include "text/tokenizer.h"

#include <nlohmann/json.hpp>

namespace ds4 {

std::string GoldenRun::mode_name() const {
  if (chunk == 0) return "full-prefill";
  if (chunk == 1) return "token-by-token";
  return "chunks-of-" + std::to_string(chunk);
}

bool GoldenReport::passed() const {
  if (runs.empty() || !tokenizer_ok) return false;
  for (const GoldenRun& r : runs) {
    if (!r.passed()) return false;
  }
  return true;
}

namespace {

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2e", v);
  return buf;
}

}  // namespace

std::string GoldenReport::summary() const {
  GoldenPart pre, dec, mtp;
  std::set<std::string> variants;
  for (const GoldenRun& r : runs) {
    variants.insert(r.variant);
    for (auto [dst, src] : {std::pair{&pre, &r.prefill}, std::pair{&dec, &r.decode}, std::pair{&mtp, &r.mtp}}) {
      dst->positions += src->positions;
      dst->within_bound += src->within_bound;
      dst->max_rel_std = std::max(dst->max_rel_std, src->max_rel_std);
      dst->worst_excess = std::max(dst->worst_excess, src->worst_excess);
      dst->top1_agree += src->top1_agree;
    }
  }
  std::string v;
  for (const std::string& s : variants) v += (v.empty() ? "" : "+") + s;
  std::ostringstream o;
  o << "golden " << fixture << " [" << backend << ", " << v << ", " << runs.size() << " runs, bound "
    << fmt(rel_tolerance) << "*std+2*noise]";
  if (tokenizer_checked) o << " tokenizer " << (tokenizer_ok ? "ok" : "MISMATCH") << ";";
  o << " prefill: max|dlogit|/std " << fmt(pre.max_rel_std) << ", within bound " << pre.within_bound << "/"
    << pre.positions << ", top-1 " << pre.top1_agree << "/" << pre.positions << ";";
  o << " decode: max|dlogit|/std " << fmt(dec.max_rel_std) << ", within bound " << dec.within_bound << "/"
    << dec.positions << ", top-1 " << dec.top1_agree << "/" << dec.positions << ";";
  if (mtp.positions > 0) {
    o << " mtp: max|dlogit|/std " << fmt(mtp.max_rel_std) << ", within bound " << mtp.within_bound << "/"
      << mtp.positions << ", top-1 " << mtp.top1_agree << "/" << mtp.positions << ";";
  }
  o << " worst |d|/bound " << fmt(std::max({pre.worst_excess, dec.worst_excess, mtp.worst_excess}));
  o << (passed() ? " PASS" : " FAIL");
  return o.str();
}

namespace {

using json = nlohmann::json;

Result<json> read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::Error("cannot open " + path);
  json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::Error(path + ": not valid JSON");
  return j;
}

template <typename T>
Status read_array(const std::string& path, size_t expected, std::vector<T>* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::Error("cannot open golden array " + path);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() != expected * sizeof(T)) {
    return Status::Error("golden array " + path + " has " + std::to_string(bytes.size()) + " bytes, expected " +
                         std::to_string(expected * sizeof(T)));
  }
  out->resize(expected);
  std::memcpy(out->data(), bytes.data(), bytes.size());
  return Status::Ok();
}

int32_t argmax(const float* v, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (v[i] > v[best]) best = i;
  }
  return static_cast<int32_t>(best);
}

float top2_gap(const float* v, int64_t n) {
  float a = -INFINITY, b = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    if (v[i] > a) {
      b = a;
      a = v[i];
    } else if (v[i] > b) {
      b = v[i];
    }
  }
  return a - b;
}

// Applies the logit and top-1 rules to one position.
void compare_row(const float* engine, const float* golden, int64_t vocab, double std_dev, float noise,
                 double rel_tolerance, int32_t position, GoldenPart* part) {
  double max_abs = 0;
  for (int64_t i = 0; i < vocab; ++i) max_abs = std::max(max_abs, std::fabs(double(engine[i]) - golden[i]));
  const double bound = rel_tolerance * std_dev + 2.0 * noise;
  part->positions++;
  if (max_abs <= bound) part->within_bound++;
  part->max_abs = std::max(part->max_abs, max_abs);
  part->max_rel_std = std::max(part->max_rel_std, max_abs / std_dev);
  if (max_abs / bound > part->worst_excess) {
    part->worst_excess = max_abs / bound;
    part->worst_position = position;
  }
  const bool same = argmax(engine, vocab) == argmax(golden, vocab);
  if (same) part->top1_agree++;
  if (top2_gap(golden, vocab) > 2 * bound) {
    part->top1_required++;
    if (same) part->top1_required_agree++;
  }
}

struct Fixture {
  std::string dir;
  json golden;
  std::vector<int32_t> prompt;
  std::vector<int32_t> stored_positions;  // prefill positions with stored logits
  int32_t vocab = 0;
  int32_t n_layers = 0;
  int32_t n_steps = 0;

  std::string path(const std::string& file) const { return dir + "/" + file; }
  const json& array(const std::string& name) const { return golden["arrays"][name]; }
  bool has_array(const std::string& name) const { return golden["arrays"].contains(name); }
};

Result<Fixture> load_fixture(const std::string& dir) {
  Fixture f;
  f.dir = dir;
  auto j = read_json(dir + "/golden.json");
  if (!j.ok()) return j.status();
  f.golden = std::move(j.value());
  const json& g = f.golden;
  if (!g.contains("prompt") || !g.contains("positions") || !g.contains("decode") || !g.contains("arrays") ||
      !g.contains("config")) {
    return Status::Error(dir + "/golden.json: missing one of prompt, positions, decode, arrays, config");
  }
  f.prompt = g["prompt"]["ids"].get<std::vector<int32_t>>();
  f.stored_positions = g["positions"]["prefill_logits"].get<std::vector<int32_t>>();
  f.vocab = g["config"]["vocab_size"].get<int32_t>();
  f.n_layers = g["config"]["n_layers"].get<int32_t>();
  f.n_steps = g["decode"]["n_steps"].get<int32_t>();
  for (int32_t p : f.stored_positions) {
    if (p < 0 || p >= static_cast<int32_t>(f.prompt.size())) {
      return Status::Error(dir + "/golden.json: stored position " + std::to_string(p) + " is outside the prompt");
    }
  }
  return f;
}

struct VariantData {
  std::vector<float> prefill, prefill_noise, decode, decode_noise;
  std::vector<float> mtp, mtp_noise;      // empty when the fixture has no MTP goldens
  std::vector<int32_t> mtp_positions;
  std::vector<int32_t> decode_tokens;
  double logit_std = 1.0;
  double rel_tolerance = GoldenOptions::kStrictTolerance;  // the rule being applied
};

Result<VariantData> load_variant(const Fixture& f, const std::string& v) {
  VariantData d;
  const size_t np = f.stored_positions.size(), V = f.vocab, ns = f.n_steps;
  for (const char* name : {"prefill_logits_", "noise_prefill_", "decode_logits_", "noise_decode_"}) {
    if (!f.has_array(name + v)) return Status::Error(f.dir + "/golden.json: no array " + std::string(name) + v);
  }
  DS4_RETURN_IF_ERROR(read_array(f.path(f.array("prefill_logits_" + v)["file"]), np * V, &d.prefill));
  DS4_RETURN_IF_ERROR(read_array(f.path(f.array("noise_prefill_" + v)["file"]), np, &d.prefill_noise));
  DS4_RETURN_IF_ERROR(read_array(f.path(f.array("decode_logits_" + v)["file"]), ns * V, &d.decode));
  DS4_RETURN_IF_ERROR(read_array(f.path(f.array("noise_decode_" + v)["file"]), ns, &d.decode_noise));
  d.decode_tokens = f.golden["decode"]["tokens"][v].get<std::vector<int32_t>>();
  if (static_cast<int32_t>(d.decode_tokens.size()) < f.n_steps) {
    return Status::Error(f.dir + "/golden.json: decode.tokens." + v + " has fewer than n_steps entries");
  }
  d.logit_std = f.golden["decision_margins"][v]["logit_std"].get<double>();
  if (f.has_array("mtp_logits_" + v) && f.has_array("noise_mtp_" + v) && f.golden["positions"].contains("mtp_logits")) {
    d.mtp_positions = f.golden["positions"]["mtp_logits"].get<std::vector<int32_t>>();
    const size_t nm = d.mtp_positions.size();
    DS4_RETURN_IF_ERROR(read_array(f.path(f.array("mtp_logits_" + v)["file"]), nm * V, &d.mtp));
    DS4_RETURN_IF_ERROR(read_array(f.path(f.array("noise_mtp_" + v)["file"]), nm, &d.mtp_noise));
    for (int32_t p : d.mtp_positions) {
      if (p < 0 || p >= static_cast<int32_t>(f.prompt.size())) {
        return Status::Error(f.dir + "/golden.json: MTP position " + std::to_string(p) + " is outside the prompt");
      }
    }
  }
  return d;
}

// Debug capture of the full prefill: HC states of positions 0..3 and routing sets.
struct Capture {
  std::vector<float> hc;                  // [layer][pos 0..3][hc_dim]
  std::vector<std::vector<int32_t>> route; // [pos * n_layers + layer] -> experts
  std::map<std::pair<int32_t, int32_t>, std::vector<int32_t>> indexer;  // (layer, pos) -> selected rows
  int32_t hc_dim = 0;
  int32_t n_layers = 0;
  int32_t n_used = 0;
};

void attach_capture(Backend* backend, Capture* cap, int32_t n_layers, int32_t hc_dim, int32_t n_used,
                    size_t n_prompt) {
  auto* cpu_backend = dynamic_cast<cpu::CpuBackend*>(backend);
  if (cpu_backend == nullptr) return;
  cap->hc_dim = hc_dim;
  cap->n_layers = n_layers;
  cap->n_used = n_used;
  cap->hc.assign(static_cast<size_t>(n_layers) * 4 * hc_dim, NAN);
  cap->route.assign(n_prompt * n_layers, {});
  cpu::CpuTrace trace;
  trace.block_output = [cap](int32_t layer, const BatchToken& t, const float* x) {
    if (layer >= cap->n_layers) return;  // the MTP block
    if (t.pos < 4) std::copy(x, x + cap->hc_dim, cap->hc.begin() + (static_cast<size_t>(layer) * 4 + t.pos) * cap->hc_dim);
  };
  trace.routing = [cap, n_prompt](int32_t layer, const BatchToken& t, const int32_t* e, const float*) {
    if (layer < cap->n_layers && static_cast<size_t>(t.pos) < n_prompt) {
      cap->route[static_cast<size_t>(t.pos) * cap->n_layers + layer].assign(e, e + cap->n_used);
    }
  };
  trace.indexer = [cap, n_prompt](int32_t layer, const BatchToken& t, const std::vector<int32_t>& selected) {
    if (static_cast<size_t>(t.pos) < n_prompt) cap->indexer[{layer, t.pos}] = selected;
  };
  cpu_backend->set_trace(std::move(trace));
}

// Compares the indexer's choices with indexer_selected_{v}_layer{L} wherever the
// engine's indexer had to choose; differences where the stored margin is below 1e-3
// are near-ties.
void report_indexer(const Fixture& f, const std::string& v, const Capture& cap, const std::vector<int32_t>& ratios,
                    std::vector<std::string>* details) {
  const int32_t np = static_cast<int32_t>(f.prompt.size());
  const int32_t first = f.golden["positions"].value("indexer_selected_first", 0);
  const int32_t cols = np / 4;
  std::vector<int32_t> ratio4;
  for (int32_t l = 0; l < static_cast<int32_t>(ratios.size()); ++l) {
    if (ratios[l] == 4) ratio4.push_back(l);
  }
  std::vector<float> margin;
  const bool have_margin =
      f.has_array("indexer_margin_" + v) &&
      read_array(f.path(f.array("indexer_margin_" + v)["file"]), static_cast<size_t>(np) * ratio4.size(), &margin).ok();
  for (size_t li = 0; li < ratio4.size(); ++li) {
    const int32_t l = ratio4[li];
    const std::string name = "indexer_selected_" + v + "_layer" + std::to_string(l);
    std::vector<uint8_t> sel;
    if (!f.has_array(name) ||
        !read_array(f.path(f.array(name)["file"]), static_cast<size_t>(np - first) * cols, &sel).ok()) {
      continue;
    }
    int32_t compared = 0, flips = 0, bugs = 0;
    for (const auto& [key, mine] : cap.indexer) {
      if (key.first != l || key.second < first) continue;
      const int32_t p = key.second;
      std::vector<int32_t> golden;
      for (int32_t c = 0; c < cols; ++c) {
        if (sel[static_cast<size_t>(p - first) * cols + c]) golden.push_back(c);
      }
      compared++;
      if (golden == mine) continue;
      const float m = have_margin ? margin[static_cast<size_t>(p) * ratio4.size() + li] : NAN;
      if (!std::isnan(m) && m < 1e-3) {
        flips++;
      } else if (bugs++ == 0) {
        details->push_back(v + " indexer layer " + std::to_string(l) + ": first mismatch at position " +
                           std::to_string(p) + " (margin " + fmt(m) + ")");
      }
    }
    details->push_back(v + " indexer layer " + std::to_string(l) + ": " + std::to_string(compared) +
                       " selections compared, " + std::to_string(bugs) + " mismatches with a clear margin, " +
                       std::to_string(flips) + " near-tie flips");
  }
}

void report_capture(const Fixture& f, const std::string& v, const Capture& cap, int32_t n_used,
                    std::vector<std::string>* details) {
  if (cap.hc_dim == 0) return;
  const int32_t L = cap.n_layers;
  std::vector<float> hc;
  if (f.has_array("hc_states_" + v) &&
      read_array(f.path(f.array("hc_states_" + v)["file"]), static_cast<size_t>(L) * 4 * cap.hc_dim, &hc).ok()) {
    for (int32_t l = 0; l < L; ++l) {
      double max_diff = 0, ss = 0;
      for (int64_t i = 0; i < 4LL * cap.hc_dim; ++i) {
        const size_t k = static_cast<size_t>(l) * 4 * cap.hc_dim + i;
        max_diff = std::max(max_diff, std::fabs(double(cap.hc[k]) - hc[k]));
        ss += double(hc[k]) * hc[k];
      }
      const double rms = std::sqrt(ss / (4.0 * cap.hc_dim));
      details->push_back(v + " hc_states layer " + std::to_string(l) + ": max|diff| " + fmt(max_diff) + " (rms " +
                         fmt(rms) + ")" + (max_diff > 1e-3 * rms ? " MISMATCH" : ""));
    }
  }
  std::vector<int32_t> experts;
  std::vector<float> margin;
  const size_t np = f.prompt.size();
  if (f.has_array("router_experts_" + v) &&
      read_array(f.path(f.array("router_experts_" + v)["file"]), np * L * n_used, &experts).ok()) {
    const bool have_margin = f.has_array("router_margin_" + v) &&
                             read_array(f.path(f.array("router_margin_" + v)["file"]), np * L, &margin).ok();
    int32_t flips = 0, bugs = 0;
    for (size_t p = 0; p < np; ++p) {
      for (int32_t l = 0; l < L; ++l) {
        const auto& mine = cap.route[p * L + l];
        std::set<int32_t> a(mine.begin(), mine.end());
        std::set<int32_t> b(experts.begin() + (p * L + l) * n_used, experts.begin() + (p * L + l + 1) * n_used);
        if (a == b) continue;
        const float m = have_margin ? margin[p * L + l] : NAN;
        if (!std::isnan(m) && m < 1e-3) {
          flips++;
          continue;
        }
        if (bugs++ == 0) {
          details->push_back(v + " routing: first mismatch at position " + std::to_string(p) + " layer " +
                             std::to_string(l) + " (margin " + fmt(m) + ")");
        }
      }
    }
    details->push_back(v + " routing: " + std::to_string(bugs) + " mismatches with a clear margin, " +
                       std::to_string(flips) + " near-tie flips");
  }
}

// Runs the prompt in chunks of `chunk` (0: all at once), then the teacher-forced
// decode, and compares every stored position.
// MTP over the prompt (ds4's pairing: the main state h_p with the token x_p at p), as
// one batch with the block's own window; compares the stored positions.
Status run_mtp_check(Backend* backend, SeqId seq, const Fixture& f, const VariantData& d,
                     const std::vector<float>& hidden, int32_t hc_dim, GoldenPart* part) {
  const int32_t n = static_cast<int32_t>(f.prompt.size());
  std::vector<int32_t> row_of(n, -1);
  for (size_t i = 0; i < d.mtp_positions.size(); ++i) row_of[d.mtp_positions[i]] = static_cast<int32_t>(i);
  std::vector<MtpToken> batch;
  for (int32_t p = 0; p < n; ++p) {
    batch.push_back({f.prompt[p], seq, p, hidden.data() + static_cast<size_t>(p) * hc_dim, row_of[p] >= 0, false});
  }
  ForwardOutput out;
  DS4_RETURN_IF_ERROR(backend->forward_mtp(batch, &out));
  int32_t k = 0;
  for (int32_t p = 0; p < n; ++p) {
    if (row_of[p] < 0) continue;
    const int32_t r = row_of[p];
    compare_row(out.logits.data() + static_cast<size_t>(k++) * f.vocab, d.mtp.data() + static_cast<size_t>(r) * f.vocab,
                f.vocab, d.logit_std, d.mtp_noise[r], d.rel_tolerance, p, part);
  }
  return Status::Ok();
}

Status run_mode(Backend* backend, const Fixture& f, const VariantData& d, GoldenRun* run) {
  const int32_t n = static_cast<int32_t>(f.prompt.size());
  auto seq = backend->new_sequence(n + f.n_steps + 1);
  if (!seq.ok()) return seq.status();
  std::vector<int32_t> row_of(n, -1);
  for (size_t i = 0; i < f.stored_positions.size(); ++i) row_of[f.stored_positions[i]] = static_cast<int32_t>(i);
  const int32_t chunk = run->chunk <= 0 ? n : run->chunk;
  const bool mtp = run->chunk == 0 && backend->has_mtp() && !d.mtp.empty();
  std::vector<float> hidden;  // every prompt position's final HC state, for the MTP check
  ForwardOutput out;
  Status status;
  for (int32_t start = 0; start < n && status.ok(); start += chunk) {
    const int32_t end = std::min(n, start + chunk);
    std::vector<BatchToken> batch;
    for (int32_t p = start; p < end; ++p) batch.push_back({f.prompt[p], *seq, p, row_of[p] >= 0, mtp});
    status = backend->forward(batch, &out);
    if (!status.ok()) break;
    hidden.insert(hidden.end(), out.hidden.begin(), out.hidden.end());
    int32_t k = 0;
    for (int32_t p = start; p < end; ++p) {
      if (row_of[p] < 0) continue;
      const int32_t r = row_of[p];
      compare_row(out.logits.data() + static_cast<size_t>(k++) * f.vocab, d.prefill.data() + static_cast<size_t>(r) * f.vocab,
                  f.vocab, d.logit_std, d.prefill_noise[r], d.rel_tolerance, p, &run->prefill);
    }
  }
  if (mtp && status.ok()) {
    const int32_t hc_dim = static_cast<int32_t>(hidden.size() / f.prompt.size());
    status = run_mtp_check(backend, *seq, f, d, hidden, hc_dim, &run->mtp);
  }
  for (int32_t i = 0; i < f.n_steps && status.ok(); ++i) {
    BatchToken t{d.decode_tokens[i], *seq, n + i, true, false};
    status = backend->forward(std::span<const BatchToken>(&t, 1), &out);
    if (!status.ok()) break;
    const float* golden = d.decode.data() + static_cast<size_t>(i) * f.vocab;
    compare_row(out.logits.data(), golden, f.vocab, d.logit_std, d.decode_noise[i], d.rel_tolerance, n + i,
                &run->decode);
    const double bound = d.rel_tolerance * d.logit_std + 2.0 * d.decode_noise[i];
    if (i + 1 < static_cast<int32_t>(d.decode_tokens.size()) && top2_gap(golden, f.vocab) > 2 * bound) {
      run->decode_tokens_required++;
      if (argmax(out.logits.data(), f.vocab) == d.decode_tokens[i + 1]) run->decode_tokens_reproduced++;
    }
  }
  backend->free_sequence(*seq);
  return status;
}

std::string describe(const GoldenRun& r) {
  std::ostringstream o;
  auto part = [&](const char* name, const GoldenPart& p) {
    o << " " << name << " max|d|/std " << fmt(p.max_rel_std) << " in-bound " << p.within_bound << "/" << p.positions
      << " top-1 " << p.top1_agree << "/" << p.positions << " (required " << p.top1_required_agree << "/"
      << p.top1_required << ") worst |d|/bound " << fmt(p.worst_excess) << " at " << p.worst_position << ";";
  };
  o << r.variant << " " << r.mode_name() << ":";
  part("prefill", r.prefill);
  part("decode", r.decode);
  if (r.mtp.positions > 0) part("mtp", r.mtp);
  o << " decode tokens " << r.decode_tokens_reproduced << "/" << r.decode_tokens_required
    << (r.passed() ? " ok" : " FAILED");
  return o.str();
}

}  // namespace

double default_golden_tolerance(BackendKind kind) {
  return kind == BackendKind::kCuda ? GoldenOptions::kFastPathTolerance : GoldenOptions::kStrictTolerance;
}

Result<GoldenReport> run_golden(const GoldenOptions& options) {
  auto fixture = load_fixture(options.fixture_dir);
  if (!fixture.ok()) return fixture.status();
  const Fixture& f = fixture.value();
  GoldenReport report;
  report.fixture = f.golden.value("fixture", options.fixture_dir);
  report.backend = std::string(backend_kind_name(options.backend));
  report.rel_tolerance = options.rel_tolerance;

  const std::string model_path = options.model_path.empty() ? f.path("model.gguf") : options.model_path;
  auto model = Model::Load(model_path);
  if (!model.ok()) return model.status();
  const std::string mtp_path = f.path("mtp.gguf");
  if (options.check_mtp && std::ifstream(mtp_path).good()) {
    DS4_RETURN_IF_ERROR(model.value()->load_mtp(mtp_path));
  }
  const ModelConfig& c = model.value()->config();
  if (c.vocab != f.vocab || c.n_layers != f.n_layers) {
    return Status::Error("golden " + f.dir + ": the model (" + model_path + ") has vocab " + std::to_string(c.vocab) +
                         " and " + std::to_string(c.n_layers) + " layers, the fixture " + std::to_string(f.vocab) +
                         " and " + std::to_string(f.n_layers));
  }

  if (options.check_tokenizer && f.golden["prompt"].contains("text")) {
    auto tok = Tokenizer::FromGguf(model.value()->gguf());
    if (tok.ok()) {
      report.tokenizer_checked = true;
      report.tokenizer_ok = tok->encode_with_specials(f.golden["prompt"]["text"].get<std::string>()) == f.prompt;
      if (!report.tokenizer_ok) report.details.push_back("tokenizer: prompt ids differ from golden.json prompt.ids");
    }
  }

  for (const std::string& v : options.variants) {
    if (!f.has_array("prefill_logits_" + v)) {
      report.details.push_back("variant " + v + ": not in this fixture, skipped");
      continue;
    }
    auto data = load_variant(f, v);
    if (!data.ok()) return data.status();
    data.value().rel_tolerance = options.rel_tolerance;
    BackendOptions bo;
    bo.threads = options.threads;
    bo.qat = (v == "qat");
    bo.max_batch = std::max<int32_t>(bo.max_batch, static_cast<int32_t>(f.prompt.size()));
    for (int32_t chunk : options.modes) {
      auto backend = make_backend(*model.value(), options.backend, bo);
      if (!backend.ok()) return backend.status();
      Capture cap;
      if (options.debug && chunk == 0) {
        attach_capture(backend.value().get(), &cap, c.n_layers, c.hc_dim(), c.n_experts_used, f.prompt.size());
      }
      GoldenRun run;
      run.variant = v;
      run.chunk = chunk;
      Status s = run_mode(backend.value().get(), f, data.value(), &run);
      if (!s.ok()) return s.wrap("golden " + f.dir + " " + v + " " + run.mode_name());
      report.details.push_back(describe(run));
      if (options.debug && chunk == 0) {
        report_capture(f, v, cap, c.n_experts_used, &report.details);
        report_indexer(f, v, cap, c.compress_ratios, &report.details);
      }
      report.runs.push_back(std::move(run));
    }
  }
  return report;
}

}  // namespace ds4
