// chat.hpp - the relay's decisions, without a socket: who is a member, what a datagram
// means, what must be sent to whom because of it. server.cpp hands each event to a Room,
// which adds to an Outcome the datagrams to send and the lines to log; time comes in as an
// argument, so all of it is tested and fuzzed without a network (tests/fuzz/fuzz_chat.cpp).
// One datagram is one line. What the server sends ends in '\n' (so `nc -u` shows tidy
// lines); what it receives may end in one '\n' and holds no other. Notices start "* ".
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/endpoint.hpp"
#include "common/io.hpp"
#include "labs/02-udp-chat/defences.hpp"

namespace chat {

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
    RateWindow window;  // defences.hpp
};

inline std::string notice(std::string_view text) {
    return "* " + std::string(text) + "\n";
}

class Room {
  public:
    explicit Room(Limits limits) : limits_(limits), idle_(limits.idle_seconds) {}

    // One datagram of `bytes` from `from`, at `now`. An unknown address goes to the gate; a
    // member passes the rate limit (leaving never counts), the size limit and the one-line
    // rule, in that order, before its line is a command or is relayed.
    void receive(const lab::Endpoint& from, std::string_view bytes, Clock::time_point now,
                 Outcome& out) {
        const std::string_view line =
            bytes.substr(0, bytes.size() - (bytes.ends_with('\n') ? 1 : 0));
        const auto it = std::ranges::find(members_, from, &Client::address);
        if (it == members_.end()) return stranger(from, bytes.size(), line, now, out);
        members_.splice(members_.end(), members_, it);  // heard from now: the last to expire
        Client& client = members_.back();
        client.last_heard = now;
        const long long over = line == "/quit" ? 0 : client.window.add(now, limits_.rate);
        if (over == 1) {
            refuse(out, client,
                   "rate limit: " + std::to_string(limits_.rate) +
                       " messages a second; dropping the rest");
        }
        if (over > 0) return;
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
        while (!members_.empty() && now - members_.front().last_heard >= idle_) {
            const std::string name = members_.front().name;
            members_.pop_front();
            out.sends.push_back({everyone(), notice(name + " left (idle)")});
            out.log.push_back("client " + name + " dropped: idle for " +
                              lab::seconds_text(limits_.idle_seconds));
        }
    }
    // Seconds until the member heard from longest ago is to be forgotten (none: nobody here).
    [[nodiscard]] std::optional<double> seconds_left(Clock::time_point now) const {
        if (members_.empty()) return std::nullopt;
        return std::chrono::duration<double>(idle_ - (now - members_.front().last_heard)).count();
    }
    [[nodiscard]] std::size_t size() const noexcept { return members_.size(); }
    [[nodiscard]] const Gate& gate() const noexcept { return gate_; }

  private:
    // An address that is no member: the join line sent back joins it (or draws "server
    // busy" in a full room); anything else is answered as the gate allows (defences.hpp).
    void stranger(const lab::Endpoint& from, std::size_t size, std::string_view line,
                  Clock::time_point now, Outcome& out) {
        const std::string text = lab::format_address(from);
        if (line != gate_.join_line(from)) {
            const auto answer = gate_.answer(from, size);
            if (answer) out.sends.push_back({{from}, *answer});
            out.log.push_back("unverified " + text + ": " + std::to_string(size) + " bytes, " +
                              (answer ? "answered with its cookie" : "too few to answer"));
        } else if (members_.size() >= static_cast<std::size_t>(limits_.max_clients)) {
            out.sends.push_back({{from}, std::string(kBusyReply)});
            out.log.push_back("refused " + text + ": server busy");
        } else {
            out.sends.push_back({everyone(), notice(text + " joined")});
            members_.push_back(Client{from, text, now, RateWindow{now}});
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
            for (const Client& c : members_) {
                list += (&c == &members_.front() ? " " : ", ") + c.name;
            }
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
    std::chrono::duration<double> idle_;  // seconds
    Gate gate_;
    std::list<Client> members_;  // in the order they were last heard from, oldest first
};

}  // namespace chat
