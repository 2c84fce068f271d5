// chat.hpp - the relay's decisions, without a socket: who is a member, what a datagram
// means, what must be sent to whom because of it. server.cpp hands each event to a Room,
// which adds to an Outcome the datagrams to send and the lines to log; time comes in as an
// argument, so all of it is tested and fuzzed without a network (tests/fuzz/fuzz_chat.cpp).
// One datagram is one line. What the server sends ends in '\n' (so `nc -u` shows tidy
// lines); what it receives may end in one '\n' and holds no other. Notices start "* ".
#pragma once

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstddef>
#include <functional>
#include <list>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/endpoint.hpp"
#include "common/io.hpp"

namespace chat {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kMaxNick = 16;
constexpr std::size_t kAmplification = 3;  // bytes sent to an unverified address per byte in
constexpr std::string_view kBusyReply = "* server busy\n";

struct Limits {             // server.cpp's options, with their defaults and ceilings
    long long max_clients;  // members at once
    long long max_message;  // bytes in one line
    long long rate;         // datagrams a second from one member
    double idle_seconds;    // a member silent this long is forgotten
};

struct Send {  // one datagram: the same bytes to every address in `to`
    std::vector<lab::Endpoint> to;
    std::string bytes;
};

struct Outcome {  // what the events of one turn of the loop make the server do
    std::vector<Send> sends;
    std::vector<std::string> log;
};

struct Client {
    lab::Endpoint address;  // the key: IP *and* port, IPv4 or IPv6
    std::string name;       // the address as text, until /nick
    Clock::time_point last_heard;
    Clock::time_point window_start;  // the rate limit counts datagrams per one-second window
    long long in_window = 0;
};

inline std::string notice(std::string_view text) {
    return "* " + std::string(text) + "\n";
}

// 1 to 16 letters, digits, '-' or '_': never ':' or '.', so no nick passes for an address.
inline bool valid_nick(std::string_view nick) {
    return !nick.empty() && nick.size() <= kMaxNick && std::ranges::all_of(nick, [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '_';
    });
}

class Room {
  public:
    explicit Room(Limits limits)
        : limits_(limits),
          idle_(std::chrono::duration_cast<Clock::duration>(
              std::chrono::duration<double>(limits.idle_seconds))) {
        std::random_device random;  // a new secret at every start: old cookies stop working
        secret_ = std::to_string(random()) + "." + std::to_string(random());
    }

    // One datagram of `bytes` from `from`, at `now`.
    void receive(const lab::Endpoint& from, std::string_view bytes, Clock::time_point now,
                 Outcome& out) {
        const std::string_view line =
            bytes.substr(0, bytes.size() - (bytes.ends_with('\n') ? 1 : 0));
        const auto it = std::ranges::find(members_, from, &Client::address);
        if (it == members_.end()) return stranger(from, bytes.size(), line, now, out);
        members_.splice(members_.end(), members_, it);  // heard from now: the last to expire
        Client& client = members_.back();
        client.last_heard = now;
        if (line != "/quit" && over_rate(client, now, out)) return;  // leaving is never limited
        if (bytes.size() > static_cast<std::size_t>(limits_.max_message)) {
            refuse(out, client,
                   "message too long: " + std::to_string(bytes.size()) + " bytes, the limit is " +
                       std::to_string(limits_.max_message));
        } else if (line.find('\n') != std::string_view::npos) {
            refuse(out, client, "one line per message: a newline inside is refused");
        } else if (line.starts_with('/')) {
            command(client, line, out);
        } else if (!line.empty()) {  // an empty line is a keepalive: heard from, no more
            relay(client, line, out);
        }
    }

    // The timer event. Members are kept in the order they were last heard from, so the
    // front is always the next to have been silent too long: forget from the front.
    void expire(Clock::time_point now, Outcome& out) {
        while (!members_.empty() && now >= members_.front().last_heard + idle_) {
            const std::string name = members_.front().name;
            members_.pop_front();
            out.sends.push_back({everyone(), notice(name + " left (idle)")});
            out.log.push_back("client " + name + " dropped: idle for " +
                              lab::seconds_text(limits_.idle_seconds));
        }
    }
    [[nodiscard]] std::optional<Clock::time_point> next_expiry() const {
        if (members_.empty()) return std::nullopt;
        return members_.front().last_heard + idle_;
    }
    [[nodiscard]] std::size_t size() const noexcept { return members_.size(); }

    // Six letters or digits only this server can compute for this address, from its random
    // secret: 62^6 is about 2^36, so a "/join COOKIE" forged for someone else's address is a
    // blind guess. (std::hash is no cryptographic MAC; a real service uses SipHash or HMAC.)
    [[nodiscard]] std::string cookie(const lab::Endpoint& address) const {
        constexpr std::string_view kDigits =
            "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        std::size_t value = std::hash<std::string>{}(secret_ + lab::format_address(address));
        std::string text(6, '0');
        for (char& digit : text)
            digit = kDigits[(value /= kDigits.size()) % kDigits.size()];
        return text;
    }

  private:
    // The defence against amplification (RFC 9000, section 8.1): an address that has not
    // shown it receives what is sent to it gets at most three times the bytes it sent. Its
    // one answer is the line to send back, "* /join COOKIE" (15 bytes: three times "/join");
    // whoever sends that back from the same address has received it, and may join. Nothing
    // is stored meanwhile: the cookie is computed again when the line comes back.
    void stranger(const lab::Endpoint& from, std::size_t size, std::string_view line,
                  Clock::time_point now, Outcome& out) {
        const std::string text = lab::format_address(from);
        const std::string answer = "/join " + cookie(from);
        if (line != answer) {
            const bool affordable = notice(answer).size() <= size * kAmplification;
            if (affordable) out.sends.push_back({{from}, notice(answer)});
            out.log.push_back("unverified " + text + ": " + std::to_string(size) + " bytes, " +
                              (affordable ? "answered with its cookie" : "too few to answer"));
        } else if (members_.size() >= static_cast<std::size_t>(limits_.max_clients)) {
            out.sends.push_back({{from}, std::string(kBusyReply)});
            out.log.push_back("refused " + text + ": server busy");
        } else {
            out.sends.push_back({everyone(), notice(text + " joined")});
            members_.push_back(Client{from, text, now, now, 0});
            tell(out, members_.back(), "welcome " + text + ", " + online());
            out.log.push_back("client " + text + " joined, " + online());
        }
    }

    // The fan-out: "NAME: TEXT\n" to every member but the sender, as one Send, and the
    // log line "from NAME: N bytes, relayed to K".
    void relay(const Client& sender, std::string_view text, Outcome& out) const {
        // TASK 02.relay
        Send send{everyone(&sender), sender.name + ": " + std::string(text) + "\n"};
        out.log.push_back("from " + sender.name + ": " + std::to_string(text.size()) +
                          " bytes, relayed to " + std::to_string(send.to.size()));
        out.sends.push_back(std::move(send));
        // END TASK
    }

    void command(Client& client, std::string_view line, Outcome& out) {
        const auto space = line.find(' ');
        const std::string_view name = line.substr(0, space);
        const std::string wanted(space == std::string_view::npos ? "" : line.substr(space + 1));
        if (name == "/nick" && !valid_nick(wanted)) {
            tell(out, client, "bad nick: use 1 to 16 letters, digits, '-' or '_'");
        } else if (name == "/nick" &&
                   std::ranges::find(members_, wanted, &Client::name) != members_.end()) {
            tell(out, client, "nick " + wanted + " is taken");
        } else if (name == "/nick") {
            const std::string old = std::exchange(client.name, wanted);
            tell(out, client, "you are now " + wanted);
            out.sends.push_back({everyone(&client), notice(old + " is now " + wanted)});
            out.log.push_back("client " + old + " is now " + wanted);
        } else if (name == "/who") {
            std::string list = online() + ":";
            for (const Client& c : members_)
                list += (&c == &members_.front() ? " " : ", ") + c.name;
            tell(out, client, list);
        } else if (name == "/quit") {
            const std::string gone = client.name;
            tell(out, client, "bye " + gone);
            members_.pop_back();  // `client` is the back: the member heard from last
            out.sends.push_back({everyone(), notice(gone + " left")});
            out.log.push_back("client " + gone + " left, " + online());
        } else if (name == "/join") {  // a member already: welcome again
            tell(out, client, "welcome " + lab::format_address(client.address) + ", " + online());
        } else {
            tell(out, client, "unknown command; try /nick NAME, /who, /quit");
        }
    }

    // The defence against a member's flood: a fixed one-second window per member, and one
    // notice when it overflows (a notice per dropped datagram would let a flood make the
    // server send as much as it receives).
    bool over_rate(Client& client, Clock::time_point now, Outcome& out) const {
        if (now - client.window_start >= std::chrono::seconds(1)) {
            client.window_start = now;
            client.in_window = 0;
        }
        if (++client.in_window == limits_.rate + 1) {
            refuse(out, client,
                   "rate limit: " + std::to_string(limits_.rate) +
                       " messages a second; dropping the rest");
        }
        return client.in_window > limits_.rate;
    }

    // Every member's address but `skip`'s: a relay never echoes to the sender.
    [[nodiscard]] std::vector<lab::Endpoint> everyone(const Client* skip = nullptr) const {
        std::vector<lab::Endpoint> to;
        for (const Client& c : members_) {
            if (&c != skip) to.push_back(c.address);
        }
        return to;
    }
    static void tell(Outcome& out, const Client& to, const std::string& text) {
        out.sends.push_back({{to.address}, notice(text)});
    }
    static void refuse(Outcome& out, const Client& to, const std::string& why) {
        tell(out, to, why);
        out.log.push_back("refused " + to.name + ": " + why);
    }
    [[nodiscard]] std::string online() const { return std::to_string(members_.size()) + " online"; }

    Limits limits_;
    Clock::duration idle_;
    std::string secret_;
    std::list<Client> members_;  // in the order they were last heard from, oldest first
};

}  // namespace chat
