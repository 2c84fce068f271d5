// endpoint.hpp - socket addresses: parse a host and a port, print any address.
//
// An Endpoint is a sockaddr_storage plus its length: big enough for IPv4, IPv6 and Unix
// addresses alike, so the labs never cast between sockaddr_in and sockaddr_in6 by hand.
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
    // The port in host byte order, or 0 for a family without ports (AF_UNIX).
    [[nodiscard]] std::uint16_t port() const noexcept;
};

// Two endpoints are equal when family, address, port (and IPv6 scope) match.
[[nodiscard]] bool operator==(const Endpoint& a, const Endpoint& b) noexcept;

// Strict: digits only, 0..65535, nothing else ("9x", "-1", "", " 80" are all refused).
[[nodiscard]] std::optional<std::uint16_t> parse_port(std::string_view text) noexcept;

// The outcome of resolve(): the addresses found, or why there are none.
struct Resolution {
    std::vector<Endpoint> endpoints;
    int gai_error = 0;  // 0, or the getaddrinfo() error code (EAI_NONAME, EAI_AGAIN, ...)
    std::string error;  // gai_strerror() text when gai_error != 0

    [[nodiscard]] bool ok() const noexcept { return gai_error == 0 && !endpoints.empty(); }
};

// Turns a host (IPv4 or IPv6 literal, or a name) and a port into socket addresses through
// getaddrinfo(). `socktype` is SOCK_DGRAM or SOCK_STREAM.
[[nodiscard]] Resolution resolve(std::string_view host, std::uint16_t port, int socktype);

// "127.0.0.1:9901", "[::1]:9901", "[fe80::1%eth0]:9901", "/tmp/x.sock", "@name" (abstract
// Unix name), "(unnamed)" (an unbound Unix socket), or "(family N)" for anything else.
[[nodiscard]] std::string format_address(const sockaddr* sa, socklen_t size);
[[nodiscard]] std::string format_address(const Endpoint& endpoint);

// The address a socket is bound to (getsockname), for example to learn the port the
// kernel chose for --port 0. Returns std::nullopt and sets errno on failure.
[[nodiscard]] std::optional<Endpoint> local_endpoint(int fd);

}  // namespace lab
