// endpoint.hpp - socket addresses: parsed, looked up, printed. Labs 01 and 03 build theirs
// by hand (sockaddr_in, htons, inet_pton, the getaddrinfo() loop); later labs use this.
// An Endpoint holds any family (IPv4, IPv6, Unix): a sockaddr_storage and its length.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lab {

struct Endpoint {
    sockaddr_storage storage{};
    socklen_t size = sizeof(sockaddr_storage);

    [[nodiscard]] sockaddr* addr() noexcept { return reinterpret_cast<sockaddr*>(&storage); }
    [[nodiscard]] const sockaddr* addr() const noexcept {
        return reinterpret_cast<const sockaddr*>(&storage);
    }
    [[nodiscard]] int family() const noexcept { return storage.ss_family; }
};

// Two endpoints are equal when family, address, port (and IPv6 scope) match.
[[nodiscard]] bool operator==(const Endpoint& a, const Endpoint& b) noexcept;

// Strict: digits only, 0..65535, nothing else ("9x", "-1", "", " 80" are all refused).
[[nodiscard]] std::optional<std::uint16_t> parse_port(std::string_view text) noexcept;

// What getaddrinfo() finds for host and port (SOCK_STREAM or SOCK_DGRAM), or why nothing.
// A literal (127.0.0.1, ::1) needs no lookup; a host of digits and dots, or with a ':', is
// only ever taken as one: a mistyped 999.1.1.1 never becomes a DNS query.
struct Resolution {
    std::vector<Endpoint> endpoints;
    std::string error;             // why none were found ("" when some were)
    bool resolver_failed = false;  // the lookup itself failed (no DNS), not the name
};
[[nodiscard]] Resolution resolve(std::string_view host, std::uint16_t port, int socktype);

// "127.0.0.1:9901", "[::1]:9901", "/tmp/x.sock", "@name" (abstract), "(unnamed)". A Unix
// name is a peer's raw choice: Log and the error functions escape it. Keeps errno.
[[nodiscard]] std::string format_address(const sockaddr* sa, socklen_t size);
[[nodiscard]] std::string format_address(const Endpoint& endpoint);

// The address a socket is bound to (getsockname): the port the kernel chose for --port 0.
[[nodiscard]] std::optional<Endpoint> local_endpoint(int fd);

}  // namespace lab
