-- luacheck settings for the backplane's Redis scripts (run by e2e/run-tests.sh).
std = "lua51"
-- What Redis provides to a script, and PUB, which the server binds to PUBLISH or
-- SPUBLISH when it loads the script.
read_globals = { "redis", "KEYS", "ARGV", "PUB", "unpack" }
