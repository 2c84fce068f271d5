// unix_address.hpp - the address options both programs of lab 12 share, and the one
// careful step the source notes skip: building a sockaddr_un without overflowing it.
//
// A Unix socket address is a family and a name. The name is either a path in the
// filesystem ("/tmp/lab12.sock") or, on Linux only, an abstract name: a leading NUL byte
// and then bytes that live in the kernel and never appear as a file ("@lab12" in output).
#pragma once

#include <sys/socket.h>
#include <sys/un.h>

#include <cstddef>
#include <cstring>
#include <string>
#include <string_view>

#include "common/args.hpp"
#include "common/endpoint.hpp"

namespace lab12 {

constexpr const char* kDefaultPath = "./lab12.sock";
// sun_path is a fixed 108-byte array on Linux. A path name needs its terminating NUL in
// it; an abstract name needs its leading NUL. Either way 107 bytes of name fit.
constexpr std::size_t kMaxNameBytes = sizeof(sockaddr_un::sun_path) - 1;

// What --path, --abstract and --dgram asked for.
struct Where {
    std::string path = kDefaultPath;
    std::string abstract_name;  // non-empty: use the abstract namespace instead of path
    bool dgram = false;         // SOCK_DGRAM instead of SOCK_STREAM

    [[nodiscard]] int type() const noexcept { return dgram ? SOCK_DGRAM : SOCK_STREAM; }
    [[nodiscard]] bool abstract() const noexcept { return !abstract_name.empty(); }
};

inline void add_address_options(lab::Args& args, Where* where) {
    args.option("--path", &where->path);
    args.option("--abstract", &where->abstract_name);
    args.flag("--dgram", &where->dgram);
}

// Fills *out with the address for `name`. Returns "" on success, else the reason it does
// not fit: the notes' strcpy() into sun_path would overflow it instead.
inline std::string make_unix_address(std::string_view name, bool abstract, lab::Endpoint* out) {
    if (name.empty()) return abstract ? "empty abstract name" : "empty socket path";
    if (name.size() > kMaxNameBytes) {
        return (abstract ? "abstract name is " : "socket path is ") + std::to_string(name.size()) +
               " bytes; sun_path holds at most " + std::to_string(kMaxNameBytes);
    }
    sockaddr_un un{};  // zeroed: a path name's terminating NUL is already there
    un.sun_family = AF_UNIX;
    const std::size_t lead = abstract ? 1 : 0;  // the abstract namespace's leading NUL
    std::memcpy(un.sun_path + lead, name.data(), name.size());
    // The length says where the name ends. A path ends at its NUL, counted here; an
    // abstract name has no terminator, so every byte the length covers is part of it.
    const std::size_t size = offsetof(sockaddr_un, sun_path) + lead + name.size() + (1 - lead);
    std::memcpy(&out->storage, &un, sizeof un);
    out->size = static_cast<socklen_t>(size);
    return "";
}

// The address the command line names; a bad one is a usage error (exit 2).
inline lab::Endpoint address_from(const lab::Args& args, const Where& where) {
    if (args.given("--path") && args.given("--abstract")) {
        args.usage_error("give --path or --abstract, not both");
    }
    if (args.given("--abstract") && !where.abstract()) args.usage_error("empty abstract name");
    lab::Endpoint address;
    const std::string& name = where.abstract() ? where.abstract_name : where.path;
    const std::string problem = make_unix_address(name, where.abstract(), &address);
    if (!problem.empty()) args.usage_error(problem);
    return address;
}

}  // namespace lab12
