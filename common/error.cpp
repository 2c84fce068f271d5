#include "common/error.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace lab {
namespace {

std::string g_program_name = "lab";  // set once by set_program_name(), then only read

// The length of the valid UTF-8 sequence at text[i] (its code point in *code), or 0.
std::size_t utf8_length(std::string_view text, std::size_t i, char32_t* code) {
    const auto lead = static_cast<unsigned char>(text[i]);
    std::size_t n = 0;  // how many bytes the lead byte announces (0: not a lead byte)
    if (lead >= 0xC2 && lead < 0xF5) n = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
    if (n == 0 || i + n > text.size()) return 0;
    char32_t c = lead & (0x7Fu >> n);
    for (std::size_t k = 1; k < n; ++k) {
        const auto next = static_cast<unsigned char>(text[i + k]);
        if ((next & 0xC0) != 0x80) return 0;
        c = (c << 6) | (next & 0x3Fu);
    }
    const bool overlong = (n == 3 && c < 0x800) || (n == 4 && c < 0x10000);
    if (overlong || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
    *code = c;
    return n;
}

}  // namespace

void set_program_name(std::string_view argv0) {
    const auto slash = argv0.rfind('/');
    g_program_name = escape(slash == std::string_view::npos ? argv0 : argv0.substr(slash + 1));
}

const std::string& program_name() {
    return g_program_name;
}

std::string escape(std::string_view text) {
    const int saved_errno = errno;  // callers build messages between a failure and die()
    std::string out;
    char hex[12];
    for (std::size_t i = 0, n = 0; i < text.size(); i += n) {
        const auto c = static_cast<unsigned char>(text[i]);
        char32_t code = 0;
        n = 1;
        if (c >= 0x20 && c < 0x7F && c != '\\') {
            out += static_cast<char>(c);
        } else if (c == '\\' || c == '\n' || c == '\r' || c == '\t') {
            out += c == '\\' ? "\\\\" : c == '\n' ? "\\n" : c == '\r' ? "\\r" : "\\t";
        } else if (c < 0x80 || (n = utf8_length(text, i, &code)) == 0) {
            n = 1;  // a control byte, or a byte that is not UTF-8
            std::snprintf(hex, sizeof hex, "\\x%02x", c);
            out += hex;
        } else if ((code >= 0x80 && code <= 0x9F) || (code >= 0x202A && code <= 0x202E) ||
                   (code >= 0x2066 && code <= 0x2069)) {  // invisible: C1, bidi overrides
            std::snprintf(hex, sizeof hex, "\\u%04x", static_cast<unsigned>(code));
            out += hex;
        } else {
            out.append(text.substr(i, n));
        }
    }
    errno = saved_errno;
    return out;
}

void note(std::string_view text) {
    // One fwrite per line, so lines from several threads never interleave mid-line.
    const std::string line = g_program_name + ": " + escape(text) + "\n";
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
}

void warn(std::string_view what, std::string_view where, int err) {
    const std::string reason = std::strerror(err);
    note(where.empty() ? std::string(what) + ": " + reason
                       : std::string(what) + " " + std::string(where) + ": " + reason);
}

void die(std::string_view what, std::string_view where, int err) {
    warn(what, where, err);
    std::exit(kExitFailure);
}

void fatal(std::string_view text) {
    note(text);
    std::exit(kExitFailure);
}

void todo(std::string_view task) {
    fatal("not implemented: task " + std::string(task) + " (see the handout, \"Your turn\")");
}

}  // namespace lab
