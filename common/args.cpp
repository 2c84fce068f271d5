#include "common/args.hpp"

#include <netdb.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "common/error.hpp"

namespace lab {

bool parse_integer(std::string_view text, long long min, long long max, long long* out) noexcept {
    long long value = 0;
    const char* end = text.data() + text.size();
    if (text.empty() || text.front() == '+') return false;
    const auto [ptr, ec] = std::from_chars(text.data(), end, value);
    if (ec != std::errc{} || ptr != end || value < min || value > max) return false;
    *out = value;
    return true;
}

bool parse_decimal(std::string_view text, double min, double max, double* out) noexcept {
    double value = 0;
    const char* end = text.data() + text.size();
    if (text.empty() || text.front() == '+') return false;
    const auto [ptr, ec] = std::from_chars(text.data(), end, value);
    if (ec != std::errc{} || ptr != end || !std::isfinite(value) || value < min || value > max) {
        return false;
    }
    *out = value;
    return true;
}

Args::Args(std::string usage) : usage_(std::move(usage)) {
    if (!usage_.empty() && usage_.back() != '\n') usage_ += '\n';
}

void Args::add(std::string_view name, char short_name, bool takes_value,
               std::function<std::string(std::string_view)> accept) {
    specs_.push_back(Spec{std::string(name), short_name, takes_value, std::move(accept)});
}

void Args::host_port(std::string default_host, std::uint16_t default_port,
                     Positionals positionals) {
    host_ = std::move(default_host);
    port_ = default_port;
    positionals_ = positionals;
    add("--host", 'H', true, [this](std::string_view v) -> std::string {
        if (v.empty()) return "empty host";
        host_ = std::string(v);
        return "";
    });
    add("--port", 'p', true, [this](std::string_view v) -> std::string {
        const auto port = parse_port(v);
        if (!port) return "bad port '" + std::string(v) + "' (want 0 to 65535)";
        port_ = *port;
        return "";
    });
}

void Args::flag(std::string_view name, bool* target, bool value) {
    add(name, 0, false, [target, value](std::string_view) -> std::string {
        *target = value;
        return "";
    });
}

void Args::option(std::string_view name, std::string* target) {
    add(name, 0, true, [target](std::string_view v) -> std::string {
        *target = std::string(v);
        return "";
    });
}

void Args::option(std::string_view name, long long* target, long long min, long long max) {
    const std::string option_name(name);
    add(name, 0, true, [=](std::string_view v) -> std::string {
        if (parse_integer(v, min, max, target)) return "";
        return "bad value '" + std::string(v) + "' for " + option_name +
               " (want a whole number from " + std::to_string(min) + " to " + std::to_string(max) +
               ")";
    });
}

void Args::option(std::string_view name, double* target, double min, double max) {
    const std::string option_name(name);
    add(name, 0, true, [=](std::string_view v) -> std::string {
        if (parse_decimal(v, min, max, target)) return "";
        char range[96];
        std::snprintf(range, sizeof range, " (want a number from %g to %g)", min, max);
        return "bad value '" + std::string(v) + "' for " + option_name + range;
    });
}

void Args::option(std::string_view name, std::function<std::string(std::string_view)> accept) {
    add(name, 0, true, std::move(accept));
}

const Args::Spec* Args::find(std::string_view arg) const {
    for (const Spec& spec : specs_) {
        if (arg == spec.name) return &spec;
        if (spec.short_name != 0 && arg.size() == 2 && arg[0] == '-' && arg[1] == spec.short_name) {
            return &spec;
        }
    }
    return nullptr;
}

bool Args::given(std::string_view name) const {
    return std::ranges::find(given_, name) != given_.end();
}

void Args::usage_error(std::string_view reason) const {
    const std::string line = program_name() + ": " + std::string(reason) + "\n" + usage_;
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::exit(kExitUsage);
}

std::string Args::positional(std::string_view value, std::size_t index) {
    // server [PORT]: index 0 is the port. client [HOST [PORT]]: 0 is the host, 1 the port.
    const bool is_host = positionals_ == Positionals::kHostPort && index == 0;
    const bool is_port = (positionals_ == Positionals::kPort && index == 0) ||
                         (positionals_ == Positionals::kHostPort && index == 1);
    if (is_host) return find("--host")->accept(value);
    if (is_port) return find("--port")->accept(value);
    return "unexpected argument '" + std::string(value) + "'";
}

Args::Outcome Args::try_parse(int argc, char** argv, std::string* problem) {
    std::size_t positional_count = 0;
    bool options_done = false;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (options_done || arg.size() < 2 || arg[0] != '-') {
            *problem = positional(arg, positional_count++);
            if (!problem->empty()) return Outcome::kError;
            continue;
        }
        if (arg == "--") {
            options_done = true;
            continue;
        }
        if (arg == "--help" || arg == "-h") return Outcome::kHelp;
        // --name=value is the same as --name value.
        const auto equals = arg.find('=');
        const bool inline_value = arg.starts_with("--") && equals != std::string_view::npos;
        const std::string_view name = inline_value ? arg.substr(0, equals) : arg;
        const Spec* spec = find(name);
        if (spec == nullptr) {
            *problem = "unknown option '" + std::string(name) + "'";
            return Outcome::kError;
        }
        std::string_view value;
        if (inline_value) {
            if (!spec->takes_value) {
                *problem = spec->name + " takes no value";
                return Outcome::kError;
            }
            value = arg.substr(equals + 1);
        } else if (spec->takes_value) {
            if (i + 1 >= argc) {
                *problem = "missing value after " + spec->name;
                return Outcome::kError;
            }
            value = argv[++i];
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

namespace {
// A host made only of digits and dots, or holding a ':', can only be meant as a literal.
bool looks_numeric(std::string_view host) {
    if (host.find(':') != std::string_view::npos) return true;
    return host.find_first_not_of("0123456789.") == std::string_view::npos;
}
}  // namespace

Endpoint Args::endpoint(int socktype) const {
    const Resolution found = resolve(host_, port_, socktype);
    if (found.ok()) return found.endpoints.front();
    if (looks_numeric(host_)) {
        usage_error("bad address '" + host_ + "' (not an IPv4 or IPv6 literal)");
    }
    if (found.gai_error == EAI_NONAME || found.gai_error == EAI_NODATA ||
        found.gai_error == EAI_ADDRFAMILY || found.gai_error == EAI_SERVICE) {
        usage_error("unknown host '" + host_ + "': " + found.error);
    }
    die_message("resolve", host_, found.error);
}

}  // namespace lab
