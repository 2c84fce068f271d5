// defences.hpp - the relay's defences, apart from the room they protect (chat.hpp):
// against amplification, a cookie an address must echo before it joins; against a
// member's flood, a rate limit per member; against impersonation, the rule for nicks.
#pragma once

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstddef>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <string_view>

#include "common/endpoint.hpp"

namespace chat {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kMaxNick = 16;
constexpr std::size_t kAmplification = 3;  // bytes sent to an unverified address per byte in
constexpr std::string_view kCookieDigits =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

// The defence against amplification (RFC 9000, section 8.1): an address that has not
// shown it receives what is sent to it gets at most three times the bytes it sent. Its
// one answer is the line to send back, "* /join COOKIE" (15 bytes: three times "/join");
// whoever sends that back from the same address has received it. Nothing is stored per
// address: the cookie is computed again when the line comes back.
class Gate {
  public:
    Gate() {
        std::random_device random;  // a new secret at every start: old cookies stop working
        secret_ = std::to_string(random()) + "." + std::to_string(random());
    }

    // "/join " and six letters or digits only this server can compute for this address:
    // 62^6 is about 2^36, so a line forged for someone else's address is a blind guess.
    // (std::hash is no cryptographic MAC; a real service uses one, SipHash or HMAC.)
    [[nodiscard]] std::string join_line(const lab::Endpoint& address) const {
        std::size_t value = std::hash<std::string>{}(secret_ + lab::format_address(address));
        std::string cookie(6, '0');
        for (char& digit : cookie) {
            digit = kCookieDigits[(value /= kCookieDigits.size()) % kCookieDigits.size()];
        }
        return "/join " + cookie;
    }

    // What an unverified address may be sent for a datagram of `size` bytes: its join line
    // as a notice, if that is at most three times `size`; otherwise nothing at all.
    [[nodiscard]] std::optional<std::string> answer(const lab::Endpoint& address,
                                                    std::size_t size) const {
        std::string notice = "* " + join_line(address) + "\n";
        if (notice.size() > size * kAmplification) return std::nullopt;
        return notice;
    }

  private:
    std::string secret_;
};

// The defence against a member's flood: a fixed one-second window per member. add()
// counts one datagram and returns how far over `rate` the window now is (0: within it), so
// that the server sends one notice when it overflows, not one per dropped datagram (which
// would let a flood make the server send as much as it receives).
struct RateWindow {
    Clock::time_point start;
    long long count = 0;

    long long add(Clock::time_point now, long long rate) {
        if (now - start >= std::chrono::seconds(1)) {
            start = now;
            count = 0;
        }
        return ++count > rate ? count - rate : 0;
    }
};

// The defence against impersonation: 1 to 16 letters, digits, '-' or '_'. Never ':' or
// '.', so no nick passes for an address, and no byte that a terminal would obey.
inline bool valid_nick(std::string_view nick) {
    return !nick.empty() && nick.size() <= kMaxNick && std::ranges::all_of(nick, [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '_';
    });
}

}  // namespace chat
