#include <sqlite3.h>

/// sqlite3_config is variadic (not callable from Swift). Memory statistics off: with them on,
/// every SQLite allocation takes a process-wide mutex (5% of the archive thread's time).
/// Only before the library initialises (the first connection opened); SQLITE_MISUSE after.
static inline int switchboard_sqlite3_disable_memstatus(void) {
    return sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}
