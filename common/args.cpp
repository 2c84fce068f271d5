#include "common/args.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "common/error.hpp"

namespace lab {
namespace {
// The whole text, a number in [min, max]: "+1", "1x", " 1", "inf" and "nan" are refused.
template <typename Number>
bool parse_number(std::string_view text, Number min, Number max, Number* out) noexcept {
    Number value{};
    const char* end = text.data() + text.size();
    if (text.empty() || text.front() == '+') return false;
    const auto [ptr, ec] = std::from_chars(text.data(), end, value);
    const bool ok = ec == std::errc{} && ptr == end && std::isfinite(static_cast<double>(value)) &&
                    value >= min && value <= max;
    if (ok) *out = value;
    return ok;
}

std::string bad_value(std::string_view value, std::string_view name, const std::string& want) {
    return "bad value '" + std::string(value) + "' for " + std::string(name) + " (want " + want +
           ")";
}
}  // namespace

bool parse_integer(std::string_view text, long long min, long long max, long long* out) noexcept {
    return parse_number(text, min, max, out);
}

Args::Args(std::string usage) : usage_(std::move(usage)) {
    if (!usage_.empty() && usage_.back() != '\n') usage_ += '\n';
}

void Args::host_port(std::string default_host, std::uint16_t default_port,
                     Positionals positionals) {
    host_ = std::move(default_host);
    port_ = default_port;
    specs_.push_back({"--host", 'H', true, [this](std::string_view v) -> std::string {
                          host_ = v;
                          return v.empty() ? "empty host" : "";
                      }});
    specs_.push_back({"--port", 'p', true, [this](std::string_view v) -> std::string {
                          const auto port = parse_port(v);
                          if (port) port_ = *port;
                          return port ? "" : "bad port '" + std::string(v) + "' (want 0 to 65535)";
                      }});
    if (positionals == Positionals::kHostPort) positional_names_ = {"--host", "--port"};
    if (positionals == Positionals::kPort) positional_names_ = {"--port"};
}

void Args::flag(std::string_view name, bool* target, bool value) {
    specs_.push_back({std::string(name), 0, false, [target, value](std::string_view) {
                          *target = value;
                          return std::string();
                      }});
}

void Args::option(std::string_view name, std::string* target) {
    specs_.push_back({std::string(name), 0, true, [target](std::string_view v) {
                          *target = v;
                          return std::string();
                      }});
}

void Args::option(std::string_view name, long long* target, long long min, long long max) {
    const std::string want =
        "a whole number from " + std::to_string(min) + " to " + std::to_string(max);
    specs_.push_back({std::string(name), 0, true, [=](std::string_view v) {
                          return parse_integer(v, min, max, target) ? "" : bad_value(v, name, want);
                      }});
}

void Args::seconds(std::string_view name, double* target) {
    specs_.push_back({std::string(name), 0, true, [=](std::string_view v) {
                          double value = 0;
                          const bool ok = parse_number(v, 0.0, 86400.0, &value) && value > 0;
                          if (ok) *target = value;
                          return ok ? ""
                                    : bad_value(v, name, "seconds, more than 0 and at most 86400");
                      }});
}

const Args::Spec* Args::find(std::string_view arg) const {
    for (const Spec& spec : specs_) {
        const bool short_form =
            spec.short_name != 0 && arg.size() == 2 && arg[0] == '-' && arg[1] == spec.short_name;
        if (arg == spec.name || short_form) return &spec;
    }
    return nullptr;
}

bool Args::given(std::string_view name) const {
    return std::ranges::find(given_, name) != given_.end();
}

void Args::usage_error(std::string_view reason) const {
    note(reason);
    std::fwrite(usage_.data(), 1, usage_.size(), stderr);
    std::exit(kExitUsage);
}

Args::Outcome Args::try_parse(int argc, char** argv, std::string* problem) {
    std::size_t positionals = 0;
    bool options_done = false;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        const Spec* spec = nullptr;
        std::string_view value;
        if (options_done || arg.size() < 2 || arg[0] != '-') {  // a positional argument
            if (positionals == positional_names_.size()) {
                *problem = "unexpected argument '" + std::string(arg) + "'";
                return Outcome::kError;
            }
            spec = find(positional_names_[positionals++]);
            value = arg;
        } else if (arg == "--") {
            options_done = true;
            continue;
        } else if (arg == "--help" || arg == "-h") {
            return Outcome::kHelp;
        } else {
            // --name=value is the same as --name value.
            const auto equals = arg.starts_with("--") ? arg.find('=') : std::string_view::npos;
            spec = find(arg.substr(0, equals));
            if (spec == nullptr) {
                *problem = "unknown option '" + std::string(arg.substr(0, equals)) + "'";
                return Outcome::kError;
            }
            if (equals != std::string_view::npos && !spec->takes_value) {
                *problem = spec->name + " takes no value";
                return Outcome::kError;
            }
            if (equals != std::string_view::npos) {
                value = arg.substr(equals + 1);
            } else if (spec->takes_value && i + 1 >= argc) {
                *problem = "missing value after " + spec->name;
                return Outcome::kError;
            } else if (spec->takes_value) {
                value = argv[++i];
            }
        }
        *problem = spec->accept(value);
        if (!problem->empty()) return Outcome::kError;
        given_.push_back(spec->name);
    }
    return Outcome::kOk;
}

void Args::parse(int argc, char** argv) {
    if (argc > 0) set_program_name(argv[0]);
    std::string problem;
    switch (try_parse(argc, argv, &problem)) {
        case Outcome::kOk:
            return;
        case Outcome::kHelp:
            std::fwrite(usage_.data(), 1, usage_.size(), stdout);
            std::exit(kExitOk);
        case Outcome::kError:
            usage_error(problem);
    }
}

Endpoint Args::endpoint(int socktype) const {
    const Resolution found = resolve(host_, port_, socktype);
    if (!found.endpoints.empty()) return found.endpoints.front();
    if (found.resolver_failed) fatal("resolve " + host_ + ": " + found.error);
    usage_error("bad host '" + host_ + "': " + found.error);
}

}  // namespace lab
