// Fuzzes lab 02's relay logic (chat::Room) without a socket: the input is a script of
// datagrams from a few senders at advancing times. Whatever arrives, the room never
// crashes, never sends a line that holds a newline before its end, and never holds more
// clients than its limit.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "labs/02-udp-chat/chat.hpp"

namespace {
lab::Endpoint sender(std::uint8_t which) {
    const char* hosts[] = {"127.0.0.1", "127.0.0.2", "::1"};
    const auto r =
        lab::resolve(hosts[which % 3], static_cast<std::uint16_t>(40000 + which % 7), SOCK_DGRAM);
    return r.endpoints.front();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    chat::Limits limits;
    limits.max_clients = 4;
    limits.max_message = 64;
    limits.rate = 5;
    limits.idle_timeout = std::chrono::seconds(3);
    chat::Room room(limits);
    auto now = chat::Clock::time_point{} + std::chrono::hours(1);
    std::size_t i = 0;
    // Each record: [who][time step][length][bytes...]
    while (i + 3 <= size) {
        const std::uint8_t who = data[i];
        now += std::chrono::milliseconds(data[i + 1] * 20);
        const std::size_t len = std::min<std::size_t>(data[i + 2], size - i - 3);
        const std::string_view bytes(reinterpret_cast<const char*>(data + i + 3), len);
        i += 3 + len;
        const lab::Endpoint from = sender(who);
        const chat::Outcome out = (who & 0x80) ? room.expire(now) : room.receive(from, bytes, now);
        for (const chat::Send& s : out.sends) {
            const auto newline = s.bytes.find('\n');
            if (newline != std::string::npos && newline + 1 != s.bytes.size()) std::abort();
        }
        if (room.size() > limits.max_clients) std::abort();
    }
    return 0;
}
