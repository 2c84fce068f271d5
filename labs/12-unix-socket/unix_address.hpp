// unix_address.hpp - what both programs of lab 12 share: the options that name the
// server's socket, and the step the notes get wrong, filling a sockaddr_un safely.
#pragma once

#include <sys/un.h>

#include <cstddef>
#include <cstring>
#include <string>

#include "common/args.hpp"
#include "common/error.hpp"

namespace lab12 {

// sun_path is 108 bytes on Linux. A path needs its terminating NUL in it, an abstract name
// its leading NUL: either way at most 107 bytes of name.
constexpr std::size_t kMaxNameBytes = sizeof(sockaddr_un::sun_path) - 1;

// Puts the address of `name` in *out: a path, or with `abstract` a Linux abstract name
// (a NUL, then the name: no file). Returns "" if it fits in sun_path, else why not, never
// truncating. The length must cover the name exactly: the kernel reads a path up to its
// NUL, but takes every byte the length covers as part of an abstract name.
inline std::string make_unix_address(const std::string& name, bool abstract, lab::Endpoint* out) {
    // TASK 12.address
    // KIT: return lab::todo<std::string>("12.address");
    if (name.size() > kMaxNameBytes) {
        return (abstract ? "abstract name is " : "socket path is ") + std::to_string(name.size()) +
               " bytes; sun_path holds at most " + std::to_string(kMaxNameBytes);
    }
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::memcpy(un.sun_path + (abstract ? 1 : 0), name.data(), name.size());
    std::memcpy(&out->storage, &un, sizeof un);
    out->size = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
    return "";
    // END TASK
}

// --path PATH, --abstract NAME and --dgram: parse() adds them to the program's options,
// parses the command line, and fills in `address`, or exits 2 with the usage.
struct Where {
    std::string path = "./lab12.sock";
    std::string abstract_name;
    bool abstract = false;  // --abstract: a name in the kernel instead of a file
    bool dgram = false;     // SOCK_DGRAM instead of SOCK_STREAM
    lab::Endpoint address;

    [[nodiscard]] int type() const noexcept { return dgram ? SOCK_DGRAM : SOCK_STREAM; }
    void parse(lab::Args& args, int argc, char** argv) {
        args.option("--path", &path);
        args.option("--abstract", &abstract_name);
        args.flag("--dgram", &dgram);
        args.parse(argc, argv);
        abstract = args.given("--abstract");
        if (abstract && args.given("--path")) args.usage_error("give --path or --abstract");
        const std::string& name = abstract ? abstract_name : path;
        if (name.empty()) args.usage_error(abstract ? "empty abstract name" : "empty path");
        const std::string problem = make_unix_address(name, abstract, &address);
        if (!problem.empty()) args.usage_error(problem);
    }
};

}  // namespace lab12
