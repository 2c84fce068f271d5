"""make trace, the drawing: sequence.svg and sequence.png from the timeline's events, with
matplotlib.

A sequence diagram: the client's lifeline on the left, the server's on the right (the
relay's between them when a session uses tools/impair), time flowing down, one row per
event. A system call is written beside its program's lifeline; a call that blocked is a
bar on the lifeline from where it began to where it returned, so what happened while it
waited (a handshake, a datagram) sits beside the bar. A packet is an arrow from the side
that sent it to the side that received it. Rows are in time order, not to scale: the left
column gives each row's time, and a dashed line marks a pause. A long stretch that only
moves bytes on one connection is folded into one row (timeline.txt has every event).
"""

from __future__ import annotations

import re

import matplotlib  # scripts/trace points MPLCONFIGDIR (its font cache) into build/trace

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from trace_events import Event  # noqa: E402

ROW = 0.24          # inches per row
WIDTH = 15.0        # inches
MAX_ROWS = 300      # about the most rows a diagram has: the steps share them
SEGMENT_MIN = 14    # rows a step keeps at least
FOLD_AT = 12        # a run of this many byte-moving events is folded
KEEP = (3, 2)       # rows kept at the start and at the end of a folded run
PAUSE = 0.25        # seconds between two rows that earn a dashed line
LABEL_CHARS = 72
X = {"client": 0.0, "relay": 0.5, "server": 1.0}
COLOURS = {"client": "#1f5fa8", "server": "#2e7d32", "relay": "#6a1b9a", "packet": "#555555",
           "SYN": "#e65100", "FIN": "#6a1b9a", "RST": "#c62828", "ICMP": "#c62828",
           "IGMP": "#00838f", "MLD": "#00838f", "error": "#c62828", "unix": "#8d6e63"}
PAYLOAD = re.compile(r'"((?:[^"\\]|\\.)*)"')  # the first bytes strace shows of a call
POLLS = {"select", "pselect6", "poll", "ppoll", "epoll_wait", "epoll_pwait", "epoll_pwait2"}


def fold(events: list[Event]) -> list[Event]:
    """Runs of events that only move bytes (data segments and their ACKs, datagrams of a
    flood, reads, writes, the polls between them) folded into one summary row."""
    out, i = [], 0
    while i < len(events):
        j = i
        while j < len(events) and events[j].data:
            j += 1
        run = events[i:j]
        if len(run) < FOLD_AT:
            out += run or [events[i]]
            i = max(j, i + 1)
            continue
        middle = run[KEEP[0]:len(run) - KEEP[1]]
        packets = [e for e in middle if e.kind == "packet"]
        payload = sum(e.extra.get("len", 0) for e in packets)
        text = "... %d packets (%d bytes of data) and %d calls that move bytes, folded: " \
               "see timeline.txt" % (len(packets), payload, len(middle) - len(packets))
        out += run[:KEEP[0]]
        out.append(Event(middle[0].time, "fold", text, "fold", label=text))
        out += run[len(run) - KEEP[1]:]
        i = j
    return out


def budget(rows: list[Event]) -> list[Event]:
    """At most about MAX_ROWS rows, shared between the steps of the session: each step
    (a command typed, a key) keeps its first rows and its last, and folds the rest."""
    segments: list[list[Event]] = [[]]
    for ev in rows:
        if ev.kind == "step" and segments[-1]:
            segments.append([])
        segments[-1].append(ev)
    if len(rows) <= MAX_ROWS:
        return rows
    per = max(SEGMENT_MIN, MAX_ROWS // len(segments))
    out = []
    for seg in segments:
        if len(seg) <= per:
            out += seg
            continue
        head, middle, tail = seg[:per - KEEP[1] - 1], seg[per - KEEP[1] - 1:-KEEP[1]], \
            seg[-KEEP[1]:]
        packets = sum(1 for e in middle if e.kind == "packet")
        text = "... %d more events (%d packets, %d calls) in this step, folded: see " \
               "timeline.txt" % (len(middle), packets, len(middle) - packets)
        out += head + [Event(middle[0].time, "fold", text, "fold", label=text)] + tail
    return out


def colour_of(ev: Event) -> str:
    if ev.kind == "packet":
        for key in ("RST", "SYN", "FIN", "ICMP", "IGMP", "MLD"):
            if key in ev.label:
                return COLOURS[key]
        return COLOURS["packet"]
    if ev.errno:
        return COLOURS["error"]
    return COLOURS.get(ev.who, "#333333")


def short(text: str, width: int = LABEL_CHARS) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def draw(events: list[Event], title: str, notes: list[str], svg, png) -> None:
    plt.rcParams.update({"svg.fonttype": "none", "font.family": "DejaVu Sans Mono",
                         "font.size": 7.5, "text.parse_math": False})  # "$ echo $?" is text
    rows = budget(fold([e for e in events if not e.extra.get("noise")]))
    sides = ["client", "server"] + (["relay"] if any(e.who == "relay" or "relay" in (e.src, e.dst)
                                                     for e in rows) else [])
    height = max(4.0, (len(rows) + 6) * ROW)
    fig = plt.figure(figsize=(WIDTH, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-1.75, 2.15)
    ax.set_ylim(len(rows) + 2.5, -4.2)
    ax.axis("off")
    start = events[0].time if events else 0.0

    # The heads and the lifelines.
    ax.text(-1.72, -3.4, title, fontsize=10, fontweight="bold", va="center")
    for n, note in enumerate(notes[:2]):
        ax.text(-1.72, -2.7 + 0.55 * n, short(note, 150), fontsize=7, color="#c62828",
                va="center")
    for side in sides:
        ax.text(X[side], -1.3, side, ha="center", va="center", fontsize=9, fontweight="bold",
                color=COLOURS[side], bbox={"boxstyle": "round,pad=0.3", "fc": "white",
                                           "ec": COLOURS[side]})
        ax.plot([X[side]] * 2, [-0.8, len(rows) + 1], color=COLOURS[side], lw=0.8, alpha=0.5)
    ax.text(-1.72, -1.3, "time (s)", va="center", fontsize=7.5, color="#777777")

    # Each row: its time, then the event.
    waiting: dict[tuple, int] = {}
    dots: dict[str, tuple[list, list]] = {}  # colour: xs, ys (drawn at once: far quicker)
    unix_sends: list[tuple[Event, int]] = []
    pids = sorted({e.pid for e in rows if e.pid})
    offset = {pid: ((pids.index(pid) % 5) - 2) * 0.008 for pid in pids}
    for row, ev in enumerate(rows):
        if row and ev.time - rows[row - 1].time >= PAUSE:
            ax.plot([-1.75, 2.15], [row - 0.5] * 2, color="#bbbbbb", lw=0.6, ls=(0, (4, 4)))
            ax.text(2.13, row - 0.62, "%.1f s later" % (ev.time - rows[row - 1].time),
                    ha="right", va="bottom", fontsize=6.5, color="#999999")
        ax.text(-1.72, row, "%.6f" % (ev.time - start), va="center", fontsize=7,
                color="#999999")
        if ev.kind == "step":  # what was typed, across the whole width
            ax.add_patch(plt.Rectangle((-1.45, row - 0.45), 3.58, 0.9, color="#f1f1f1", lw=0))
            ax.text(-1.43, row, short(ev.label, 150), va="center", fontsize=7.5,
                    fontweight="bold", color="#444444")
            continue
        if ev.kind == "fold":
            ax.text(0.5, row, ev.label, ha="center", va="center", fontsize=7, style="italic",
                    color="#777777")
            continue
        if ev.kind == "packet":
            draw_packet(ax, ev, row)
            continue
        x = X.get(ev.who, 0.0) + offset.get(ev.pid, 0.0)
        label = ("[%d] " % ev.pid if ev.tag else "") + ev.label
        if ev.kind == "wait":
            waiting[(ev.pid, ev.call, ev.fd)] = row
        if ev.kind == "call" and (ev.pid, ev.call, ev.fd) in waiting:
            began = waiting.pop((ev.pid, ev.call, ev.fd))
            ax.add_patch(plt.Rectangle((x - 0.008, began), 0.016, row - began,
                                       color=COLOURS.get(ev.who, "#999999"), alpha=0.25, lw=0))
            label = ("[%d] " % ev.pid if ev.tag else "") + "%s returns %s" % (
                ev.call, ev.label.split(") ", 1)[-1]) if row - began > 1 else label
        dots.setdefault(colour_of(ev), ([], []))[0].append(x)
        dots[colour_of(ev)][1].append(row)
        if ev.who == "relay":
            ax.text(x, row, short(ev.label, 60), ha="center", va="center", fontsize=6.5,
                    color=COLOURS["relay"], bbox={"boxstyle": "round,pad=0.15", "fc": "#f6eefa",
                                                  "ec": "none"})
        elif ev.who == "server":
            ax.text(x + 0.03, row, short(label), ha="left", va="center", color=colour_of(ev))
        else:
            ax.text(x - 0.03, row, short(label), ha="right", va="center", color=colour_of(ev))
        if ev.kind == "call" and ev.unix and (ev.result or 0) > 0:
            # Bytes on a Unix socket: the first later read by the other side took them.
            if ev.call in ("write", "writev", "sendto", "sendmsg"):
                unix_sends.append((ev, row))
            elif ev.call in ("read", "readv", "recvfrom", "recvmsg"):
                for n, (sent, sent_row) in enumerate(unix_sends):
                    if sent.who != ev.who and same_bytes(sent, ev):
                        draw_unix(ax, sent, sent_row, ev, row)
                        del unix_sends[n]
                        break
    for colour, (xs, ys) in dots.items():
        ax.plot(xs, ys, ls="none", marker="o", ms=2.5, color=colour)
    fig.savefig(svg)
    fig.savefig(png, dpi=90, pil_kwargs={"compress_level": 1})  # quick to write, larger
    plt.close(fig)


def draw_packet(ax, ev: Event, row: int) -> None:
    """An arrow from the sender's lifeline to the receiver's, a little lower: plain lines
    and markers, which matplotlib draws far quicker than annotations."""
    a = X.get(ev.src, 0.0)
    colour = colour_of(ev)
    to_network = not ev.dst or ev.dst == ev.src  # a group, a router, a broadcast
    b = a + (0.35 if a < 0.5 else -0.35) if to_network else X.get(ev.dst, 1.0)
    ax.plot([a, b], [row, row + 0.5], color=colour, lw=1.0, ls="--" if to_network else "-")
    ax.plot([b], [row + 0.5], ls="none", marker=">" if b > a else "<", ms=4, color=colour)
    ax.text((a + b) / 2, row + 0.12, short(ev.label, 40), ha="center", va="bottom",
            fontsize=6.5, color=colour)


def same_bytes(sent: Event, got: Event) -> bool:
    """Whether a read took what a write sent: the bytes strace shows of both begin alike.
    A write to a peer that is not traced (nc -U, socat) is never read by a traced program,
    and must not be paired with the next read that happens to come."""
    a, b = PAYLOAD.search(sent.text), PAYLOAD.search(got.text)
    if not a or not b:
        return True  # nothing shown to compare: the first later read is the best guess
    a, b = a.group(1).removesuffix("..."), b.group(1).removesuffix("...")
    return a.startswith(b) or b.startswith(a)


def draw_unix(ax, sent: Event, sent_row: int, got: Event, got_row: int) -> None:
    """A Unix socket's bytes go through the kernel, not a wire: a dotted arrow."""
    a, b = X.get(sent.who, 0.0), X.get(got.who, 1.0)
    ax.plot([a, b], [sent_row, got_row], color=COLOURS["unix"], lw=0.9, ls=":")
    ax.plot([b], [got_row], ls="none", marker=">" if b > a else "<", ms=4,
            color=COLOURS["unix"])
    what = "%d byte%s" % (sent.result, "" if sent.result == 1 else "s") + \
        (" + a descriptor" if "SCM_RIGHTS" in sent.text else "")
    ax.text((a + b) / 2, (sent_row + got_row) / 2, "in the kernel: " + what, ha="center",
            va="bottom", fontsize=6.5, color=COLOURS["unix"])
