// chat.hpp - the relay's decisions, without a single socket: who is a client, what one
// datagram means, and what must be sent to whom because of it.
//
// server.cpp does the I/O (recvfrom, sendto, poll) and hands each datagram to a Room.
// The Room answers with an Outcome: datagrams to send and lines to log. Time comes in as
// an argument, so everything here can be unit-tested and fuzzed without a network.
//
// Wire format: one datagram is one line. What the server sends always ends in '\n' (so
// `nc -u` prints tidy lines); what it receives may end in one '\n' (as nc sends it), but
// must hold no other. Notices from the server start with "* ".
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/endpoint.hpp"
#include "common/error.hpp"

namespace chat {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kMaxNick = 16;

// Every limit the relay keeps; server.cpp fills them from its flags.
struct Limits {
    std::size_t max_clients = 64;    // more addresses than this get "* server full"
    std::size_t max_message = 1024;  // bytes; a longer datagram is refused
    Clock::duration idle_timeout = std::chrono::seconds(300);  // silent clients are forgotten
    long long rate = 20;  // datagrams a second per client; the excess is dropped
};

// One datagram to send: the same bytes to every address in `to`.
struct Send {
    std::vector<lab::Endpoint> to;
    std::string bytes;
};

// What one event makes the server do.
struct Outcome {
    std::vector<Send> sends;
    std::vector<std::string> log;
};

struct Client {
    lab::Endpoint address;     // the key: IP *and* port, IPv4 or IPv6
    std::string address_text;  // "127.0.0.1:50000", "[::1]:50000"
    std::string nick;          // empty until /nick
    Clock::time_point last_heard;
    Clock::time_point window_start;  // the rate limit counts datagrams per one-second window
    long long in_window = 0;
    bool warned = false;  // told about the rate limit in this window already

    [[nodiscard]] const std::string& name() const { return nick.empty() ? address_text : nick; }
};

// 1 to 16 letters, digits, '-' or '_': never a ':' or '.', so no nick looks like an address.
inline bool valid_nick(std::string_view nick) {
    if (nick.empty() || nick.size() > kMaxNick) return false;
    return std::all_of(nick.begin(), nick.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '-' || c == '_';
    });
}

inline std::string notice(std::string_view text) {
    return "* " + std::string(text) + "\n";
}

class Room {
  public:
    explicit Room(Limits limits) : limits_(limits) {}

    // One datagram of `bytes` arrived from `from` at time `now`.
    Outcome receive(const lab::Endpoint& from, std::string_view bytes, Clock::time_point now) {
        Outcome out;
        const std::string from_text = lab::format_address(from);
        if (bytes.size() > limits_.max_message) {  // checked first: relayed to nobody
            tell(out, from,
                 "message too long: " + std::to_string(bytes.size()) + " bytes, the limit is " +
                     std::to_string(limits_.max_message));
            out.log.push_back("refused " + std::to_string(bytes.size()) + " bytes from " +
                              from_text);
            return out;
        }
        if (bytes.ends_with('\n')) bytes.remove_suffix(1);  // nc ends each line with one
        Client* client = find(from);
        if (client == nullptr) {
            if (bytes.empty()) return out;  // an empty datagram is no reason to register
            client = join(out, from, from_text, now);
            if (client == nullptr) return out;
        }
        client->last_heard = now;
        // Leaving is never rate-limited: a client that flooded can still say goodbye.
        if (bytes != "/quit" && over_rate(out, *client, now)) return out;
        if (bytes.empty()) {  // a keepalive: it only refreshes last_heard
            out.log.push_back("keepalive from " + client->name());
        } else if (bytes.find('\n') != std::string_view::npos) {
            tell(out, from, "one line per message: a newline inside is refused");
            out.log.push_back("refused a multi-line message from " + client->name());
        } else if (bytes.front() == '/') {
            command(out, *client, bytes);
        } else {
            relay(out, *client, bytes);
        }
        return out;
    }

    // Forgets every client silent for idle_timeout, and tells the rest.
    Outcome expire(Clock::time_point now) {
        Outcome out;
        std::vector<std::string> gone;
        std::erase_if(clients_, [&](const Client& c) {
            if (now - c.last_heard < limits_.idle_timeout) return false;
            gone.push_back(c.name());
            return true;
        });
        for (const std::string& name : gone) {
            out.sends.push_back(Send{everyone(), notice(name + " left (idle)")});
            out.log.push_back("forgot " + name + " after idle timeout, " +
                              std::to_string(clients_.size()) + " online");
        }
        return out;
    }

    // When the next client would be forgotten, if anyone is here.
    [[nodiscard]] std::optional<Clock::time_point> next_expiry() const {
        if (clients_.empty()) return std::nullopt;
        const auto oldest = std::min_element(
            clients_.begin(), clients_.end(),
            [](const Client& a, const Client& b) { return a.last_heard < b.last_heard; });
        return oldest->last_heard + limits_.idle_timeout;
    }

    [[nodiscard]] std::size_t size() const noexcept { return clients_.size(); }

  private:
    Client* find(const lab::Endpoint& address) {
        const auto it = std::find_if(clients_.begin(), clients_.end(),
                                     [&](const Client& c) { return c.address == address; });
        return it == clients_.end() ? nullptr : &*it;
    }

    const Client* find_nick(std::string_view nick) const {
        const auto it = std::find_if(clients_.begin(), clients_.end(),
                                     [&](const Client& c) { return c.nick == nick; });
        return it == clients_.end() ? nullptr : &*it;
    }

    // Every client's address, except `skip`'s: a relay never echoes to the sender.
    std::vector<lab::Endpoint> everyone(const Client* skip = nullptr) const {
        std::vector<lab::Endpoint> to;
        for (const Client& c : clients_) {
            if (&c != skip) to.push_back(c.address);
        }
        return to;
    }

    static void tell(Outcome& out, const lab::Endpoint& to, std::string_view text) {
        out.sends.push_back(Send{{to}, notice(text)});
    }

    Client* join(Outcome& out, const lab::Endpoint& from, const std::string& from_text,
                 Clock::time_point now) {
        if (clients_.size() >= limits_.max_clients) {
            tell(out, from, "server full");
            out.log.push_back("full: refused " + from_text);
            return nullptr;
        }
        out.sends.push_back(Send{everyone(), notice(from_text + " joined")});
        clients_.push_back(Client{from, from_text, "", now, now, 0, false});
        out.log.push_back("join " + from_text + ", " + std::to_string(clients_.size()) + " online");
        return &clients_.back();
    }

    // A fixed one-second window per client: cheap, and enough to stop one sender from
    // making the relay multiply a flood.
    bool over_rate(Outcome& out, Client& client, Clock::time_point now) const {
        if (now - client.window_start >= std::chrono::seconds(1)) {
            client.window_start = now;
            client.in_window = 0;
            client.warned = false;
        }
        if (++client.in_window <= limits_.rate) return false;
        if (!client.warned) {  // one notice per window, not one per dropped datagram
            client.warned = true;
            tell(out, client.address,
                 "rate limit: " + std::to_string(limits_.rate) +
                     " messages a second; dropping the rest");
            out.log.push_back("rate limit for " + client.name());
        }
        return true;
    }

    void relay(Outcome& out, const Client& sender, std::string_view text) {
        // BEGIN SOLUTION: fan the message out to everyone but the sender, as one Send pushed
        //   onto out.sends: to everyone(&sender), with the bytes "NAME: TEXT\n" (NAME is
        //   sender.name()); and log "from NAME: N bytes, relayed to K" in out.log
        Send send{everyone(&sender), sender.name() + ": " + std::string(text) + "\n"};
        out.log.push_back("from " + sender.name() + ": " + std::to_string(text.size()) +
                          " bytes, relayed to " + std::to_string(send.to.size()));
        out.sends.push_back(std::move(send));
        // END SOLUTION
    }

    void command(Outcome& out, Client& client, std::string_view line);
    void nick(Outcome& out, Client& client, std::string_view wanted);
    void who(Outcome& out, const Client& client) const;
    void quit(Outcome& out, const Client& client);

    Limits limits_;
    std::vector<Client> clients_;  // in order of arrival; /who lists them so
};

inline void Room::command(Outcome& out, Client& client, std::string_view line) {
    const auto space = line.find(' ');
    const std::string_view name = line.substr(0, space);
    const std::string_view argument =
        space == std::string_view::npos ? std::string_view{} : line.substr(space + 1);
    if (name == "/join") {
        tell(out, client.address,
             "welcome " + client.address_text + ", " + std::to_string(clients_.size()) + " online");
    } else if (name == "/nick") {
        nick(out, client, argument);
    } else if (name == "/who") {
        who(out, client);
    } else if (name == "/quit") {
        quit(out, client);  // `client` is gone after this line
    } else {
        tell(out, client.address, "unknown command; try /join, /nick NAME, /who, /quit");
    }
}

inline void Room::nick(Outcome& out, Client& client, std::string_view wanted) {
    if (!valid_nick(wanted)) {
        tell(out, client.address, "bad nick: use 1 to 16 letters, digits, '-' or '_'");
        return;
    }
    const Client* holder = find_nick(wanted);
    if (holder != nullptr && holder != &client) {
        tell(out, client.address, "nick " + std::string(wanted) + " is taken");
        return;
    }
    const std::string old = client.name();
    client.nick = std::string(wanted);
    tell(out, client.address, "you are now " + client.nick);
    out.sends.push_back(Send{everyone(&client), notice(old + " is now " + client.nick)});
    out.log.push_back(old + " is now " + client.nick);
}

inline void Room::who(Outcome& out, const Client& client) const {
    std::string list = std::to_string(clients_.size()) + " online:";
    for (const Client& c : clients_)
        list += (&c == &clients_.front() ? " " : ", ") + c.name();
    tell(out, client.address, list);
}

inline void Room::quit(Outcome& out, const Client& client) {
    const std::string name = client.name();
    const lab::Endpoint address = client.address;
    std::erase_if(clients_, [&](const Client& c) { return &c == &client; });
    tell(out, address, "bye " + name);
    out.sends.push_back(Send{everyone(), notice(name + " left")});
    out.log.push_back(name + " left, " + std::to_string(clients_.size()) + " online");
}

}  // namespace chat
