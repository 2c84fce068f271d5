// 04-tcp-fork client: the TCP echo client of lab 03, with this lab's default port.
#define LAB_DEFAULT_PORT 9904
#include "labs/03-tcp-echo/client.cpp"
