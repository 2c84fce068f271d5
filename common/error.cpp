#include "common/error.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace lab {
namespace {
std::string& name_storage() {
    static std::string name = "lab";
    return name;
}
}  // namespace

void set_program_name(std::string_view argv0) {
    const auto slash = argv0.rfind('/');
    name_storage() = std::string(slash == std::string_view::npos ? argv0 : argv0.substr(slash + 1));
}

const std::string& program_name() {
    return name_storage();
}

std::string format_error(std::string_view what, std::string_view address, std::string_view reason) {
    std::string line = program_name();
    line += ": ";
    line += what;
    if (!address.empty()) {
        line += ' ';
        line += address;
    }
    line += ": ";
    line += reason;
    return line;
}

void report_message(std::string_view what, std::string_view address, std::string_view reason) {
    const std::string line = format_error(what, address, reason) + '\n';
    // One fwrite per line, so lines from several threads never interleave mid-line.
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
}

void report(std::string_view text) {
    const std::string line = program_name() + ": " + std::string(text) + '\n';
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
}

void die(std::string_view text) {
    report(text);
    std::exit(kExitFailure);
}

void report_error(std::string_view what, std::string_view address, int err) {
    report_message(what, address, std::strerror(err));
}

void die_error(std::string_view what, std::string_view address, int err) {
    report_error(what, address, err);
    std::exit(kExitFailure);
}

void die_message(std::string_view what, std::string_view address, std::string_view reason) {
    report_message(what, address, reason);
    std::exit(kExitFailure);
}

void not_implemented(std::string_view what) {
    die("not implemented: " + std::string(what));
}

}  // namespace lab
