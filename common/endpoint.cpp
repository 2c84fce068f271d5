#include "common/endpoint.hpp"

#include <netdb.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <cerrno>
#include <cstddef>
#include <cstring>

namespace lab {

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
    const bool digits = !text.empty() && text.size() <= 5 &&
                        text.find_first_not_of("0123456789") == std::string_view::npos;
    const int value = digits ? std::stoi(std::string(text)) : -1;
    if (value < 0 || value > 65535) return std::nullopt;
    return static_cast<std::uint16_t>(value);
}

Resolution resolve(std::string_view host, std::uint16_t port, int socktype) {
    const std::string host_text(host);
    const std::string port_text = std::to_string(port);
    // A host of digits and dots, or with a ':', can only be meant as a literal.
    const bool numeric = host.find(':') != std::string_view::npos ||
                         host.find_first_not_of("0123456789.") == std::string_view::npos;
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;  // IPv4 or IPv6, whichever the host is
    hints.ai_socktype = socktype;
    hints.ai_flags = AI_NUMERICSERV | AI_NUMERICHOST;  // first: a literal, no lookup at all
    addrinfo* list = nullptr;
    int rc = host.empty() ? EAI_NONAME
                          : getaddrinfo(host_text.c_str(), port_text.c_str(), &hints, &list);
    if (rc == EAI_NONAME && !numeric && !host.empty()) {
        hints.ai_flags = AI_NUMERICSERV;  // a name: now the resolver may look it up
        rc = getaddrinfo(host_text.c_str(), port_text.c_str(), &hints, &list);
    }
    Resolution found;
    if (rc != 0) {
        found.resolver_failed =
            rc == EAI_AGAIN || rc == EAI_FAIL || rc == EAI_MEMORY || rc == EAI_SYSTEM;
        found.error = numeric || host.empty() ? "not an IPv4 or IPv6 address"
                      : rc == EAI_SYSTEM      ? std::strerror(errno)
                                              : gai_strerror(rc);
        return found;
    }
    for (const addrinfo* ai = list; ai != nullptr; ai = ai->ai_next) {
        Endpoint endpoint;
        std::memcpy(&endpoint.storage, ai->ai_addr, ai->ai_addrlen);
        endpoint.size = ai->ai_addrlen;
        found.endpoints.push_back(endpoint);
    }
    freeaddrinfo(list);
    return found;
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
    const int saved_errno = errno;
    std::string text;
    char host[NI_MAXHOST];
    char port[NI_MAXSERV];
    if (size < sizeof(sa_family_t)) {  // recvfrom() reports 0 for an unbound Unix peer
        text = "(unnamed)";
    } else if (sa->sa_family == AF_UNIX) {
        text = format_unix(sa, size);
    } else if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) {
        text = "(family " + std::to_string(sa->sa_family) + ")";
    } else if (getnameinfo(sa, size, host, sizeof host, port, sizeof port,
                           NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        text = "(unprintable address)";
    } else {
        text = sa->sa_family == AF_INET6 ? "[" + std::string(host) + "]:" + port
                                         : std::string(host) + ":" + port;
    }
    errno = saved_errno;
    return text;
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
