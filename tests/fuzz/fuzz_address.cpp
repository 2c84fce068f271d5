// Fuzzes lab::format_address with arbitrary socket addresses of every family and length
// the kernel could hand back (up to sizeof(sockaddr_storage)), and parse_port/resolve on
// numeric hosts built from the input. Formatting must never read out of bounds.
#include <netdb.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "common/endpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    lab::Endpoint e;
    const std::size_t n = std::min(size - 1, sizeof e.storage);
    std::memcpy(&e.storage, data + 1, n);
    // The first byte picks a family the labs meet; the rest is the address as received.
    static constexpr int kFamilies[] = {AF_INET, AF_INET6, AF_UNIX, AF_UNSPEC};
    e.storage.ss_family = static_cast<sa_family_t>(kFamilies[data[0] % 4]);
    e.size = static_cast<socklen_t>(std::max(n, sizeof(sa_family_t)));
    const std::string text = lab::format_address(e);
    if (text.empty()) __builtin_trap();

    // Numeric-looking hosts only (digits and dots, or a ':'): resolve() never sends those to
    // a resolver, so fuzzing them stays off the network. Anything else would be a name.
    std::string host(reinterpret_cast<const char*>(data), std::min<std::size_t>(size, 64));
    const bool numeric = host.find(':') != std::string::npos ||
                         host.find_first_not_of("0123456789.") == std::string::npos;
    if (numeric) {
        const lab::Resolution r = lab::resolve(host, 9901, SOCK_DGRAM);
        if (!r.endpoints.empty()) {
            if (lab::format_address(r.endpoints.front()).empty()) __builtin_trap();
        } else if (r.error.empty()) {
            __builtin_trap();
        }
    }
    return 0;
}
