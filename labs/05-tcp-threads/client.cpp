// 05-tcp-threads client: the TCP echo client of lab 03, with this lab's default port.
// The protocol is the same; only the server changed (one thread per connection).
#define LAB_DEFAULT_PORT 9905
#include "labs/03-tcp-echo/client.cpp"
