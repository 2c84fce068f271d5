#include "common/endpoint.hpp"

#include <netdb.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <cstddef>
#include <cstring>
#include <memory>

namespace lab {

std::uint16_t Endpoint::port() const noexcept {
    if (family() == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&storage)->sin_port);
    if (family() == AF_INET6) {
        return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port);
    }
    return 0;
}

bool operator==(const Endpoint& a, const Endpoint& b) noexcept {
    if (a.family() != b.family()) return false;
    if (a.family() == AF_INET) {
        const auto* x = reinterpret_cast<const sockaddr_in*>(&a.storage);
        const auto* y = reinterpret_cast<const sockaddr_in*>(&b.storage);
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a.family() == AF_INET6) {
        const auto* x = reinterpret_cast<const sockaddr_in6*>(&a.storage);
        const auto* y = reinterpret_cast<const sockaddr_in6*>(&b.storage);
        return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
               std::memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    return a.size == b.size && std::memcmp(&a.storage, &b.storage, a.size) == 0;
}

std::optional<std::uint16_t> parse_port(std::string_view text) noexcept {
    if (text.empty() || text.size() > 5) return std::nullopt;
    unsigned value = 0;
    for (const char c : text) {
        if (c < '0' || c > '9') return std::nullopt;
        value = value * 10 + static_cast<unsigned>(c - '0');
    }
    if (value > 65535) return std::nullopt;
    return static_cast<std::uint16_t>(value);
}

Resolution resolve(std::string_view host, std::uint16_t port, int socktype) {
    Resolution result;
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;  // IPv4 or IPv6, whichever the host is
    hints.ai_socktype = socktype;
    hints.ai_flags = AI_NUMERICSERV;  // the port is a number: never look it up
    const std::string host_text(host);
    const std::string port_text = std::to_string(port);
    addrinfo* list = nullptr;
    result.gai_error = host_text.empty()
                           ? EAI_NONAME
                           : getaddrinfo(host_text.c_str(), port_text.c_str(), &hints, &list);
    if (result.gai_error != 0) {
        // EAI_SYSTEM means "look at errno"; every other code has its own text.
        result.error =
            result.gai_error == EAI_SYSTEM ? std::strerror(errno) : gai_strerror(result.gai_error);
        return result;
    }
    const std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> owner(list, freeaddrinfo);
    for (const addrinfo* ai = list; ai != nullptr; ai = ai->ai_next) {
        Endpoint endpoint;
        std::memcpy(&endpoint.storage, ai->ai_addr, ai->ai_addrlen);
        endpoint.size = ai->ai_addrlen;
        result.endpoints.push_back(endpoint);
    }
    return result;
}

namespace {
std::string format_unix(const sockaddr* sa, socklen_t size) {
    const auto* un = reinterpret_cast<const sockaddr_un*>(sa);
    const auto path_offset = offsetof(sockaddr_un, sun_path);
    if (size <= path_offset) return "(unnamed)";
    const std::size_t path_size = size - path_offset;
    if (un->sun_path[0] == '\0') {  // abstract namespace: the name is every byte after the NUL
        return "@" + std::string(un->sun_path + 1, path_size - 1);
    }
    // A path name is NUL-terminated within path_size (the kernel may or may not count it).
    return {un->sun_path, strnlen(un->sun_path, path_size)};
}
}  // namespace

std::string format_address(const sockaddr* sa, socklen_t size) {
    // recvfrom() reports size 0 for a datagram from an unbound Unix socket.
    if (size < sizeof(sa_family_t)) return "(unnamed)";
    if (sa->sa_family == AF_UNIX) return format_unix(sa, size);
    if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) {
        return "(family " + std::to_string(sa->sa_family) + ")";
    }
    char host[NI_MAXHOST];
    char port[NI_MAXSERV];
    if (getnameinfo(sa, size, host, sizeof host, port, sizeof port,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        return "(unprintable address)";
    }
    if (sa->sa_family == AF_INET6) return std::string("[") + host + "]:" + port;
    return std::string(host) + ":" + port;
}

std::string format_address(const Endpoint& endpoint) {
    return format_address(endpoint.addr(), endpoint.size);
}

std::optional<Endpoint> local_endpoint(int fd) {
    Endpoint endpoint;
    if (getsockname(fd, endpoint.addr(), &endpoint.size) == -1) return std::nullopt;
    return endpoint;
}

}  // namespace lab
