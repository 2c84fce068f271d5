// Fuzzes lab 02's relay logic (chat::Room) without a socket: the input is a script of
// datagrams from a few senders at advancing times. Whatever arrives, the room never
// crashes, never sends a line that holds a newline before its end, never holds more
// members than its limit, and never sends an address that has not proved it receives
// more than three times the bytes that address sent (the anti-amplification rule).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <set>
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
    const chat::Limits limits{4, 64, 5, 3.0};  // members, bytes a line, rate, idle seconds
    chat::Room room(limits);
    std::set<std::string> verified;  // addresses that were welcomed: they proved they receive
    auto now = chat::Clock::time_point{} + std::chrono::hours(1);
    std::size_t i = 0;
    // Each record: [who][time step][length][bytes...]; a first byte 0x01 stands for the
    // sender's own "/join COOKIE", which the fuzzer cannot guess.
    while (i + 3 <= size) {
        const std::uint8_t who = data[i];
        now += std::chrono::milliseconds(data[i + 1] * 20);
        const std::size_t len = std::min<std::size_t>(data[i + 2], size - i - 3);
        std::string bytes(reinterpret_cast<const char*>(data + i + 3), len);
        i += 3 + len;
        const lab::Endpoint from = sender(who);
        const std::string from_text = lab::format_address(from);
        if (bytes.starts_with('\x01')) bytes = room.gate().join_line(from);
        chat::Outcome out;
        if ((who & 0x80) != 0) {
            room.expire(now, out);
        } else {
            room.receive(from, bytes, now, out);
        }
        std::size_t to_sender = 0;
        for (const chat::Send& s : out.sends) {
            const auto newline = s.bytes.find('\n');
            if (newline != std::string::npos && newline + 1 != s.bytes.size()) std::abort();
            for (const lab::Endpoint& to : s.to) {
                if (to == from) to_sender += s.bytes.size();
                if (to == from && s.bytes.starts_with("* welcome ")) verified.insert(from_text);
            }
        }
        const bool unverified = (who & 0x80) == 0 && !verified.contains(from_text);
        if (unverified && to_sender > chat::kAmplification * bytes.size()) std::abort();
        if (room.size() > static_cast<std::size_t>(limits.max_clients)) std::abort();
    }
    return 0;
}
