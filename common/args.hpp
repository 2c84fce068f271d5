// args.hpp - the command line every lab shares (docs/conventions.md, "Command line").
//
//   lab::Args args(kUsage);
//   args.host_port("127.0.0.1", 9903, lab::Positionals::kPort);  // -H/--host, -p/--port, [PORT]
//   args.seconds("--idle-timeout", &idle_seconds);  // also flag(), option()
//   args.parse(argc, argv);  // --help: usage on stdout, exit 0; "PROG: REASON" + usage, exit 2
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

    // -H/--host ADDR and -p/--port N with their defaults, and the positional form.
    void host_port(std::string default_host, std::uint16_t default_port, Positionals positionals);
    // A flag without a value: sets *target = value when given (so --no-loop can store false).
    void flag(std::string_view name, bool* target, bool value = true);
    // An option with a value: text, a whole number in [min, max], or a time in seconds
    // (more than 0, at most a day: a timeout is never switched off by a small value).
    void option(std::string_view name, std::string* target);
    void option(std::string_view name, long long* target, long long min, long long max);
    void seconds(std::string_view name, double* target);

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

    // The first address resolve() finds for host() and port(). A host that is neither a
    // literal nor a known name is a usage error (exit 2); a resolver failure exits 1.
    [[nodiscard]] Endpoint endpoint(int socktype) const;

  private:
    struct Spec {
        std::string name;     // "--port"
        char short_name = 0;  // 'p', or 0 for none
        bool takes_value = false;
        std::function<std::string(std::string_view)> accept;  // "" if fine, else why not
    };
    [[nodiscard]] const Spec* find(std::string_view arg) const;

    std::string usage_;
    std::vector<Spec> specs_;
    std::vector<std::string> given_;
    std::vector<std::string> positional_names_;  // "--host", "--port" in positional order
    std::string host_ = "127.0.0.1";
    std::uint16_t port_ = 0;
};

// A whole number parsed strictly: all of the text, in [min, max] ("+1", "1x", " 1" fail).
[[nodiscard]] bool parse_integer(std::string_view text, long long min, long long max,
                                 long long* out) noexcept;

}  // namespace lab
