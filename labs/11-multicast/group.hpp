// group.hpp - what both programs of lab 11 read from their command line: the multicast
// group (an address plus the port) and the local interface that carries it.
#pragma once

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>

#include "common/args.hpp"
#include "common/endpoint.hpp"

namespace mcast {

constexpr const char* kDefaultGroup = "239.0.0.10";     // administratively scoped: this site only
constexpr const char* kDefaultInterface = "127.0.0.1";  // loopback: nothing leaves this machine

// An interface as the socket options want it. IPv4 accepts a local address or an index
// (struct ip_mreqn carries both); IPv6 accepts only an index.
struct Interface {
    in_addr address{};   // INADDR_ANY when chosen by index
    unsigned index = 0;  // 0 when chosen by address
};

inline bool is_multicast(const lab::Endpoint& endpoint) {
    if (endpoint.family() == AF_INET) {
        const auto* in = reinterpret_cast<const sockaddr_in*>(&endpoint.storage);
        return IN_MULTICAST(ntohl(in->sin_addr.s_addr));  // 224.0.0.0/4
    }
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&endpoint.storage);
    return endpoint.family() == AF_INET6 && IN6_IS_ADDR_MULTICAST(&in6->sin6_addr);  // ff00::/8
}

// The group with the port, or a usage error (exit 2) when it is not a multicast address.
inline lab::Endpoint group_endpoint(const lab::Args& args, const std::string& group,
                                    std::uint16_t port) {
    const lab::Resolution found = lab::resolve(group, port, SOCK_DGRAM);
    if (found.endpoints.empty() || !is_multicast(found.endpoints.front())) {
        args.usage_error("bad --group '" + group +
                         "' (want a multicast address: 224.0.0.0/4 or ff00::/8)");
    }
    return found.endpoints.front();
}

// --interface: an IPv4 address of this host, or an interface name such as lo or eth0.
inline Interface parse_interface(const lab::Args& args, const std::string& text, int family) {
    Interface chosen;
    if (family == AF_INET && inet_pton(AF_INET, text.c_str(), &chosen.address) == 1) {
        return chosen;
    }
    if (family == AF_INET6 && !args.given("--interface")) {
        args.usage_error(
            "an IPv6 group needs --interface NAME (eth0, say): IPv6 multicast "
            "goes out of one interface, chosen by index");
    }
    chosen.index = if_nametoindex(text.c_str());
    if (chosen.index == 0) {
        args.usage_error("bad --interface '" + text + "' (want " +
                         (family == AF_INET ? "a local IPv4 address or " : "") +
                         "an interface name; `ip link` lists them)");
    }
    return chosen;
}

}  // namespace mcast
