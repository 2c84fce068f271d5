// address.hpp - lab 01's socket addresses, built by hand. bind(), sendto() and connect()
// take a sockaddr: for IPv4 a sockaddr_in, for IPv6 a sockaddr_in6, each with the port in
// network byte order. Lab 03 shows how names (localhost) are looked up with getaddrinfo();
// from lab 04 on, common/endpoint.hpp does all of this.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstdint>
#include <optional>
#include <string>

#include "common/endpoint.hpp"

namespace addr {

// An IPv4 literal ("127.0.0.1") or else an IPv6 one ("::1"), and a port, as the socket
// address the kernel takes: sin_family or sin6_family, the address from inet_pton(), the
// port through htons() (9901 is 0x26ad: the bytes 26 ad go on the wire, high byte first).
// std::nullopt for anything else: nothing is looked up, so no text ever becomes a DNS
// query. A lab::Endpoint starts zeroed, as sin_zero must be.
inline std::optional<lab::Endpoint> from_text(const std::string& host, std::uint16_t port) {
    // TASK 01.address
    lab::Endpoint parsed;
    auto* v4 = reinterpret_cast<sockaddr_in*>(&parsed.storage);
    if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        parsed.size = sizeof(sockaddr_in);
        return parsed;
    }
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&parsed.storage);
    if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        parsed.size = sizeof(sockaddr_in6);
        return parsed;
    }
    return std::nullopt;
    // END TASK
}

// The other way, for the log and the ready line: "127.0.0.1:50123" or "[::1]:50123".
// inet_ntop() writes the address as text; ntohs() brings the port back to host order.
inline std::string to_text(const lab::Endpoint& address) {
    char host[INET6_ADDRSTRLEN] = "?";
    if (address.family() == AF_INET) {
        const auto* v4 = reinterpret_cast<const sockaddr_in*>(&address.storage);
        inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host);
        return std::string(host) + ":" + std::to_string(ntohs(v4->sin_port));
    }
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&address.storage);
    inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof host);
    return "[" + std::string(host) + "]:" + std::to_string(ntohs(v6->sin6_port));
}

// Why a host was refused, for the usage error.
inline std::string refusal(const std::string& host) {
    return "bad host '" + host +
           "': lab 01 takes an IPv4 or IPv6 address (127.0.0.1, ::1); names come in lab 03";
}

}  // namespace addr
