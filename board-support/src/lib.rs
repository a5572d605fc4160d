//! Board profiles (see README). Filled in by the board-support work.
