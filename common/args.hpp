// args.hpp - the command line every lab shares (see CONVENTIONS.md, "Command line").
//
//   lab::Args args(kUsage);
//   args.host_port("127.0.0.1", 9901, lab::Positionals::kPort);  // -H/--host, -p/--port, [PORT]
//   args.flag("--quiet", &quiet);
//   args.option("--timeout", &timeout_seconds, 0.001, 3600.0);
//   args.parse(argc, argv);           // --help: usage to stdout, exit 0; bad input: exit 2
//   lab::Endpoint local = args.endpoint(SOCK_DGRAM);
//
// Options take their value as the next argument or after '=' (--port=0). A bad argument
// prints "PROG: REASON" and then the usage, to stderr, and exits 2.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/endpoint.hpp"

namespace lab {

// Which positional arguments a program accepts, as in the source notes.
enum class Positionals {
    kNone,      // none at all
    kPort,      // server [PORT]
    kHostPort,  // client [HOST [PORT]]
};

class Args {
  public:
    explicit Args(std::string usage);

    // Registers -H/--host ADDR and -p/--port N with their defaults, and the positional form.
    void host_port(std::string default_host, std::uint16_t default_port, Positionals positionals);

    // A flag without a value: sets *target = value when given (so --no-loop can store false).
    void flag(std::string_view name, bool* target, bool value = true);
    // An option with a value, stored as text or as a number checked against [min, max].
    void option(std::string_view name, std::string* target);
    void option(std::string_view name, long long* target, long long min, long long max);
    void option(std::string_view name, double* target, double min, double max);
    // An option whose value a function checks: it returns "" if fine, else the reason.
    void option(std::string_view name, std::function<std::string(std::string_view)> accept);

    void parse(int argc, char** argv);

    // The same without exiting, for tests and fuzzing: kHelp when --help was asked for,
    // kError with the reason in *problem for a bad command line.
    enum class Outcome { kOk, kHelp, kError };
    Outcome try_parse(int argc, char** argv, std::string* problem);

    // Prints "PROG: REASON" and the usage on stderr, then exits 2. Labs call it for checks
    // that need several options at once (two conflicting flags, say).
    [[noreturn]] void usage_error(std::string_view reason) const;

    [[nodiscard]] const std::string& host() const noexcept { return host_; }
    [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
    // True when the option (long name) appeared on the command line.
    [[nodiscard]] bool given(std::string_view name) const;

    // Resolves host() and port() for `socktype`. A host that is not a valid literal or a
    // known name is a usage error (exit 2); a resolver failure (no DNS) exits 1.
    [[nodiscard]] Endpoint endpoint(int socktype) const;

  private:
    struct Spec {
        std::string name;     // "--port"
        char short_name = 0;  // 'p', or 0 for none
        bool takes_value = false;
        std::function<std::string(std::string_view)> accept;
    };
    const Spec* find(std::string_view arg) const;
    void add(std::string_view name, char short_name, bool takes_value,
             std::function<std::string(std::string_view)> accept);
    [[nodiscard]] std::string positional(std::string_view value, std::size_t index);

    std::string usage_;
    std::vector<Spec> specs_;
    std::vector<std::string> given_;
    Positionals positionals_ = Positionals::kNone;
    std::string host_ = "127.0.0.1";
    std::uint16_t port_ = 0;
};

// Numbers parsed strictly (the whole text, in range); used by Args and handy in tests.
[[nodiscard]] bool parse_integer(std::string_view text, long long min, long long max,
                                 long long* out) noexcept;
[[nodiscard]] bool parse_decimal(std::string_view text, double min, double max,
                                 double* out) noexcept;

}  // namespace lab
