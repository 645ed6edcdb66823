// switchboard-bench: the XMPP load generator (see docs/performance.md in shared/ for what is measured).
//
// Layout
//   Commands.swift      CLI (ArgumentParser): common options and one subcommand per scenario.
//   Scenarios.swift     register, login/roster, idle, messages — orchestration from the main thread.
//   MUC.swift           the XEP-0045 fan-out scenario.
//   Harness.swift       event loops (--threads), one LoopWorker per loop, settings, fan-out helpers.
//   LoopWorker.swift    per-loop: launches connections with K in flight, counts, drives traffic.
//   XMPPClient.swift    one connection = one channel handler state machine: stream open → features
//                       → STARTTLS → SASL (SCRAMClient / PLAINMessage from XMPPCore) → restart → bind
//                       → session if required → initial presence (optional) → ready → clean close.
//   ChannelSetup.swift  bootstrap (source addresses, TCP_NODELAY), TLS, RFC 7395 WebSocket pipeline.
//   StanzaFramer.swift  splits the byte stream into top-level elements without building trees;
//                       FastScan reads id/type of a <message> start tag (the hot path).
//   Measurement.swift   histograms, /proc sampling (server CPU, RSS, per-core busy), JSON output.
//   SelfTest.swift      `switchboard-bench selftest` (hidden): framer/scanner checks, no server needed.
//
// Hot path (messages): a received <message> is not parsed into an XMLElement. The framer finds the
// element's bounds (tag nesting, quote-aware, skipping CDATA/PIs/comments); FastScan reads the `id`
// (`sbm<send time in monotonic ns>`) and `type` attributes of its start tag; the latency is
// now − send time; the reply is a pre-serialised prefix + decimal timestamp + suffix in one
// ByteBuffer, written without flush and flushed once per read batch. Everything else (negotiation,
// IQs, presence, anything unrecognised) goes through XMLStreamParser (expat), so it is still checked
// for well-formedness.
//
// Every run is bounded: per-connection --timeout from connect to ready, a close timeout after our
// </stream:stream>, and --duration for traffic. Exit status: 0, or 2 when `register` could not
// create/confirm every account; errors (bad options, nobody logged in) exit 1 with a message.
SwitchboardBench.main()
