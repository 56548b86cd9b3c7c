# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_genalytics_global_optspecs
    string join \n config= database-url= redis-url= redis-cluster redis-sentinel= redis-ns= stream= stream-pattern= raw-retention= v/verbose q/quiet color= log-format= h/help V/version
end

function __fish_genalytics_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_genalytics_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_genalytics_using_subcommand
    set -l cmd (__fish_genalytics_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c genalytics -n "__fish_genalytics_needs_command" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_needs_command" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_needs_command" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_needs_command" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_needs_command" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_needs_command" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_needs_command" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_needs_command" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_needs_command" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_needs_command" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_needs_command" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_needs_command" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_needs_command" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_needs_command" -s h -l help -d 'Print help'
complete -c genalytics -n "__fish_genalytics_needs_command" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_needs_command" -f -a "demo" -d 'Run the whole pipeline on throwaway local servers: simulate, transfer, aggregate, report'
complete -c genalytics -n "__fish_genalytics_needs_command" -f -a "migrate" -d 'Create or upgrade the PostgreSQL schema (also adopts the original service\'s tables)'
complete -c genalytics -n "__fish_genalytics_needs_command" -f -a "transfer" -d 'Drain the Redis stream into generation_events, exactly once'
complete -c genalytics -n "__fish_genalytics_needs_command" -f -a "aggregate" -d 'Roll events up by UTC hour (every hour with new events, or the hours given)'
complete -c genalytics -n "__fish_genalytics_needs_command" -f -a "report" -d 'Print a report: overview, trends, user, models, failures, peak-hours'
complete -c genalytics -n "__fish_genalytics_needs_command" -f -a "status" -d 'Is data flowing? Stream, transfer lag, rollup backlog, table sizes'
complete -c genalytics -n "__fish_genalytics_needs_command" -f -a "check" -d 'Alerting: exit 3 when a threshold is breached (failure rate, p95, lag, stale rollups)'
complete -c genalytics -n "__fish_genalytics_needs_command" -f -a "prune" -d 'Delete raw events (and dead letters) older than a cutoff; rollups are kept'
complete -c genalytics -n "__fish_genalytics_needs_command" -f -a "rejected" -d 'Dead letters: list them, show one as received, replay them after a fix, purge them'
complete -c genalytics -n "__fish_genalytics_needs_command" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell)'
complete -c genalytics -n "__fish_genalytics_needs_command" -f -a "config" -d 'Show every setting, its value (passwords masked) and where it came from'
complete -c genalytics -n "__fish_genalytics_needs_command" -f -a "simulate" -d 'Write realistic synthetic traffic into the stream, exactly as the service\'s producer does'
complete -c genalytics -n "__fish_genalytics_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c genalytics -n "__fish_genalytics_using_subcommand demo" -l events -d 'Stream entries to simulate over the last 24 hours' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand demo" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand demo" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand demo" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand demo" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand demo" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand demo" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand demo" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand demo" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand demo" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand demo" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand demo" -l keep -d 'Leave the servers running and print the settings to try other commands on them'
complete -c genalytics -n "__fish_genalytics_using_subcommand demo" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand demo" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand demo" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand demo" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand demo" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand migrate" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand migrate" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand migrate" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand migrate" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand migrate" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand migrate" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand migrate" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand migrate" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand migrate" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand migrate" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand migrate" -l status -d 'List applied and pending migrations instead of applying them'
complete -c genalytics -n "__fish_genalytics_using_subcommand migrate" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand migrate" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand migrate" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand migrate" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand migrate" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -l batch-size -d 'Entries per transaction (and at most per read from Redis)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -l max-events -d 'Stop after this many entries' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -l keep -d 'Stored entries younger than this stay in the stream for live monitoring' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -l parallel -d 'With several streams (--stream more than once, or a pattern): how many to transfer at once; following, each stream has its own' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -l format -d 'Summary format' -r -f -a "text\t'One line for people and cron mail'
json\t'One JSON object'"
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -l follow -d 'Keep reading new entries until SIGINT/SIGTERM, committing at least every second; survives server restarts'
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -l wait -d 'Wait for a transfer already running instead of exiting'
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -l new-stream -d 'The key holds a new stream (recreated below the stored position): store all its entries, from its first'
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -l aggregate -d 'Also roll up hours that have ended: following, each hour as it ends and hours late events queued again at most once a minute (no aggregate timer needed); otherwise once, after'
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand transfer" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -l hour -d 'Roll up the hour containing this time (2026-11-27T14, RFC 3339 or naive UTC)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -l from -d 'Backfill every hour from this time …' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -l to -d '… up to this time (exclusive)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -l jobs -d 'Connections rolling up hours at once (default: the CPUs, at most 4)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -l format -d 'Summary format' -r -f -a "text\t'One line for people and cron mail'
json\t'One JSON object'"
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -l include-current -d 'Also roll up the hour in progress'
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand aggregate" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -f -a "overview" -d 'Totals, success rate, durations and users over the window (default 7 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -f -a "trends" -d 'One point per hour or local day, gaps filled with zeros (default 7 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -f -a "user" -d 'One user\'s generations, recent activity and failures (default 30 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -f -a "models" -d 'One row per model checkpoint (default 30 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -f -a "failures" -d 'Failures by error type and the failure rate per day (default 7 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -f -a "peak-hours" -d 'Average load per hour of day, busiest first (default 30 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -f -a "html" -d 'One self-contained HTML page: overview, hourly charts, failure rate per day, the weekday × hour heatmap, models and error types (default 7 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and not __fish_seen_subcommand_from overview trends user models failures peak-hours html help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -l days -d 'Length of the window in days, ending at --until' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -l until -d 'End of the window (exclusive); default now. Fix it for reproducible reports' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -l tz -d 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -l format -d 'Output format' -r -f -a "table\t'Tables for people'
csv\t'One CSV table (pick it with --section)'
json\t'The whole report as one JSON object'
html\t'One self-contained HTML page (inline CSS and SVG charts)'"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -l section -d 'With --format csv: which table of a report with several' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -l watch -d 'Run the report again every INTERVAL (default 5s; --watch=10s) until Ctrl-C: redrawn in place on a terminal, one report after another in a pipe' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -l compare -d 'Show each figure beside the previous window of the same length, and its change'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -l materialized-only -d 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from the stored events)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -l csv-raw -d 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading \')'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from overview" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -l interval -d 'Points per hour or per day (in --tz)' -r -f -a "hourly\t''
daily\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -l days -d 'Length of the window in days, ending at --until' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -l until -d 'End of the window (exclusive); default now. Fix it for reproducible reports' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -l tz -d 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -l format -d 'Output format' -r -f -a "table\t'Tables for people'
csv\t'One CSV table (pick it with --section)'
json\t'The whole report as one JSON object'
html\t'One self-contained HTML page (inline CSS and SVG charts)'"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -l section -d 'With --format csv: which table of a report with several' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -l watch -d 'Run the report again every INTERVAL (default 5s; --watch=10s) until Ctrl-C: redrawn in place on a terminal, one report after another in a pipe' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -l materialized-only -d 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from the stored events)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -l csv-raw -d 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading \')'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from trends" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -l days -d 'Length of the window in days, ending at --until' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -l until -d 'End of the window (exclusive); default now. Fix it for reproducible reports' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -l tz -d 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -l format -d 'Output format' -r -f -a "table\t'Tables for people'
csv\t'One CSV table (pick it with --section)'
json\t'The whole report as one JSON object'
html\t'One self-contained HTML page (inline CSS and SVG charts)'"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -l section -d 'With --format csv: which table of a report with several' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -l watch -d 'Run the report again every INTERVAL (default 5s; --watch=10s) until Ctrl-C: redrawn in place on a terminal, one report after another in a pipe' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -l materialized-only -d 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from the stored events)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -l csv-raw -d 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading \')'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from user" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -l days -d 'Length of the window in days, ending at --until' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -l until -d 'End of the window (exclusive); default now. Fix it for reproducible reports' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -l tz -d 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -l format -d 'Output format' -r -f -a "table\t'Tables for people'
csv\t'One CSV table (pick it with --section)'
json\t'The whole report as one JSON object'
html\t'One self-contained HTML page (inline CSS and SVG charts)'"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -l section -d 'With --format csv: which table of a report with several' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -l watch -d 'Run the report again every INTERVAL (default 5s; --watch=10s) until Ctrl-C: redrawn in place on a terminal, one report after another in a pipe' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -l materialized-only -d 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from the stored events)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -l csv-raw -d 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading \')'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from models" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -l days -d 'Length of the window in days, ending at --until' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -l until -d 'End of the window (exclusive); default now. Fix it for reproducible reports' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -l tz -d 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -l format -d 'Output format' -r -f -a "table\t'Tables for people'
csv\t'One CSV table (pick it with --section)'
json\t'The whole report as one JSON object'
html\t'One self-contained HTML page (inline CSS and SVG charts)'"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -l section -d 'With --format csv: which table of a report with several' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -l watch -d 'Run the report again every INTERVAL (default 5s; --watch=10s) until Ctrl-C: redrawn in place on a terminal, one report after another in a pipe' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -l materialized-only -d 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from the stored events)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -l csv-raw -d 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading \')'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from failures" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l by -d 'Split each hour of day by weekday (a heatmap in a table)' -r -f -a "weekday\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l sort -d 'Busiest slots first, or in hour order' -r -f -a "busiest\t'Busiest first'
hour\t'In (weekday and) hour order'"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l days -d 'Length of the window in days, ending at --until' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l until -d 'End of the window (exclusive); default now. Fix it for reproducible reports' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l tz -d 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l format -d 'Output format' -r -f -a "table\t'Tables for people'
csv\t'One CSV table (pick it with --section)'
json\t'The whole report as one JSON object'
html\t'One self-contained HTML page (inline CSS and SVG charts)'"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l section -d 'With --format csv: which table of a report with several' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l watch -d 'Run the report again every INTERVAL (default 5s; --watch=10s) until Ctrl-C: redrawn in place on a terminal, one report after another in a pipe' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l materialized-only -d 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from the stored events)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l csv-raw -d 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading \')'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from peak-hours" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -l days -d 'Length of the window in days, ending at --until' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -l until -d 'End of the window (exclusive); default now. Fix it for reproducible reports' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -l tz -d 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -l failure-limit -d 'Draw this failure rate (percent) as a limit on the daily chart' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -s o -l output -d 'Write the page to this file (atomically) instead of stdout' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -l materialized-only -d 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from the stored events)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -s h -l help -d 'Print help'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from html" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from help" -f -a "overview" -d 'Totals, success rate, durations and users over the window (default 7 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from help" -f -a "trends" -d 'One point per hour or local day, gaps filled with zeros (default 7 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from help" -f -a "user" -d 'One user\'s generations, recent activity and failures (default 30 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from help" -f -a "models" -d 'One row per model checkpoint (default 30 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from help" -f -a "failures" -d 'Failures by error type and the failure rate per day (default 7 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from help" -f -a "peak-hours" -d 'Average load per hour of day, busiest first (default 30 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from help" -f -a "html" -d 'One self-contained HTML page: overview, hourly charts, failure rate per day, the weekday × hour heatmap, models and error types (default 7 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand report; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c genalytics -n "__fish_genalytics_using_subcommand status" -l format -d 'Output format' -r -f -a "text\t'A table of figures and one line per warning'
json\t'One JSON object'
openmetrics\t'Gauges and counters in the Prometheus/OpenMetrics text format, for the textfile collector of Prometheus\' node exporter'"
complete -c genalytics -n "__fish_genalytics_using_subcommand status" -s o -l output -d 'Write to this file instead of stdout, atomically (a temporary file in the same directory, renamed over it), readable by all: what the textfile collector of Prometheus\' node exporter needs' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand status" -l stale-grace -d 'A complete hour counts as stale once it has waited this long for its rollup (since it ended, or since a late event queued it)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand status" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand status" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand status" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand status" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand status" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand status" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand status" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand status" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand status" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand status" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand status" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand status" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand status" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand status" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l hours -d 'Window of the failure-rate and p95 checks, in hours (default 1)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l days -d 'Window of the failure-rate and p95 checks, in days' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l max-failure-rate -l crit-failure-rate -d 'Breach (critical) when failed / completions exceeds this percentage' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l max-p95 -l crit-p95 -d 'Breach (critical) when the p95 of successful durations exceeds this (e.g. 1500ms, 90s, 2m)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l max-lag -l crit-lag -d 'Breach (critical) when the oldest entry not yet transferred is older than this' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l max-stale-hours -l crit-stale-hours -d 'Breach (critical) when more complete hours than this await their rollup' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l warn-failure-rate -d 'Warning (not a breach) when the failure rate exceeds this percentage' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l warn-p95 -d 'Warning when the p95 duration exceeds this' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l warn-lag -d 'Warning when the oldest entry not yet transferred is older than this' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l warn-stale-hours -d 'Warning when more complete hours than this await their rollup' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l stale-grace -d 'A complete hour counts as stale once it has waited this long for its rollup (since it ended, or since a late event queued it)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l format -d 'Output format (exit codes stay 0 and 3)' -r -f -a "text\t'One line for people and cron mail'
json\t'One JSON object'"
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -s t -l timeout -d 'Give up after this long (a server that accepts and never answers, a lock): UNKNOWN with --nagios, else exit 1; 0 waits forever' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l nagios -d 'Speak the Monitoring Plugins protocol (Nagios, Icinga, Naemon): one status line with performance data; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN'
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand check" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand prune" -l older-than -d 'Delete raw events older than this (e.g. 90d, 36h, 1h30m, 2w)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand prune" -l batch-size -d 'Rows deleted per transaction' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand prune" -l format -d 'Summary format' -r -f -a "text\t'One line for people and cron mail'
json\t'One JSON object'"
complete -c genalytics -n "__fish_genalytics_using_subcommand prune" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand prune" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand prune" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand prune" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand prune" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand prune" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand prune" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand prune" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand prune" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand prune" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand prune" -l dry-run -d 'Count what would be deleted; delete nothing'
complete -c genalytics -n "__fish_genalytics_using_subcommand prune" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand prune" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand prune" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand prune" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand prune" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and not __fish_seen_subcommand_from list show replay purge help" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and not __fish_seen_subcommand_from list show replay purge help" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and not __fish_seen_subcommand_from list show replay purge help" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and not __fish_seen_subcommand_from list show replay purge help" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and not __fish_seen_subcommand_from list show replay purge help" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and not __fish_seen_subcommand_from list show replay purge help" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and not __fish_seen_subcommand_from list show replay purge help" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and not __fish_seen_subcommand_from list show replay purge help" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and not __fish_seen_subcommand_from list show replay purge help" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and not __fish_seen_subcommand_from list show replay purge help" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and not __fish_seen_subcommand_from list show replay purge help" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and not __fish_seen_subcommand_from list show replay purge help" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and not __fish_seen_subcommand_from list show replay purge help" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and not __fish_seen_subcommand_from list show replay purge help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and not __fish_seen_subcommand_from list show replay purge help" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and not __fish_seen_subcommand_from list show replay purge help" -f -a "list" -d 'List dead letters, oldest first: entry ID, stream, when, why'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and not __fish_seen_subcommand_from list show replay purge help" -f -a "show" -d 'Show one dead letter\'s fields exactly as received (bytes that are not printable UTF-8 escaped as \\xNN)'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and not __fish_seen_subcommand_from list show replay purge help" -f -a "replay" -d 'Parse dead letters again with today\'s parser and store those that now pass, exactly once; the rest stay with today\'s reason'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and not __fish_seen_subcommand_from list show replay purge help" -f -a "purge" -d 'Delete dead letters received before a cutoff'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and not __fish_seen_subcommand_from list show replay purge help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -l reason -d 'Only letters whose reason contains this text (any case)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -l since -d 'Only letters received at or after this time' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -l until -d 'Only letters received before this time' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -l limit -d 'Show at most this many (0: all)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -l format -r -f -a "table\t'Tables for people'
csv\t'One CSV table (pick it with --section)'
json\t'The whole report as one JSON object'
html\t'One self-contained HTML page (inline CSS and SVG charts)'"
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -l csv-raw -d 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading \')'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from show" -l format -r -f -a "text\t'One line for people and cron mail'
json\t'One JSON object'"
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from show" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from show" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from show" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from show" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from show" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from show" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from show" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from show" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from show" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from show" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from show" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from show" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from show" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from show" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from replay" -l reason -d 'Only letters whose reason contains this text (any case)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from replay" -l since -d 'Only letters received at or after this time' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from replay" -l until -d 'Only letters received before this time' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from replay" -l format -r -f -a "text\t'One line for people and cron mail'
json\t'One JSON object'"
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from replay" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from replay" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from replay" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from replay" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from replay" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from replay" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from replay" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from replay" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from replay" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from replay" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from replay" -l all -d 'Replay every letter (that the filters match)'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from replay" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from replay" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from replay" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from replay" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from replay" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from purge" -l older-than -d 'Delete letters older than this (e.g. 30d, 2w; 0 for all)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from purge" -l reason -d 'Only letters whose reason contains this text (any case)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from purge" -l format -r -f -a "text\t'One line for people and cron mail'
json\t'One JSON object'"
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from purge" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from purge" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from purge" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from purge" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from purge" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from purge" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from purge" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from purge" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from purge" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from purge" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from purge" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from purge" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from purge" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from purge" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from purge" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from help" -f -a "list" -d 'List dead letters, oldest first: entry ID, stream, when, why'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from help" -f -a "show" -d 'Show one dead letter\'s fields exactly as received (bytes that are not printable UTF-8 escaped as \\xNN)'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from help" -f -a "replay" -d 'Parse dead letters again with today\'s parser and store those that now pass, exactly once; the rest stay with today\'s reason'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from help" -f -a "purge" -d 'Delete dead letters received before a cutoff'
complete -c genalytics -n "__fish_genalytics_using_subcommand rejected; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c genalytics -n "__fish_genalytics_using_subcommand completions" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand completions" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand completions" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand completions" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand completions" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand completions" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand completions" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand completions" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand completions" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand completions" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand completions" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand completions" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand completions" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand completions" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand config" -l format -d 'Output format' -r -f -a "text\t'One line for people and cron mail'
json\t'One JSON object'"
complete -c genalytics -n "__fish_genalytics_using_subcommand config" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand config" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand config" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand config" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand config" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand config" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand config" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand config" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand config" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand config" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand config" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand config" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand config" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand config" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand config" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -l events -d 'Stream entries to write (requests, completions and cancellations together)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -l hours -d 'Length of the simulated window, ending at --end' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -l users -d 'Distinct users generating traffic' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -l seed -d 'Seed for reproducible traffic (random when omitted; the summary prints it)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -l end -d 'End of the window (exclusive); default now' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -l maxlen -d 'Stream length cap as the producer applies it (XADD MAXLEN ~); 0 keeps everything' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -l config -d 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml' -r -F
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -l database-url -d 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -l redis-url -d 'Redis connection URL (rediss:// for TLS)' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -l redis-sentinel -d 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -l redis-ns -d 'Namespace of the stream key: {ns}:generation_events:stream' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -l stream -d 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -l stream-pattern -d 'For transfer: every stream whose key matches this Redis glob (e.g. \'genonaut:generation_events:stream:*\'); more than once allowed' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -l raw-retention -d 'How long raw events are kept (prune\'s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition' -r
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -l color -d 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -l log-format -d 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers' -r -f -a "text\t''
json\t''"
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -l redis-cluster -d 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -s v -l verbose -d 'Log more to stderr (-v progress, -vv debugging)'
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -s q -l quiet -d 'Print only errors'
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c genalytics -n "__fish_genalytics_using_subcommand simulate" -s V -l version -d 'Print version'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and not __fish_seen_subcommand_from demo migrate transfer aggregate report status check prune rejected completions config simulate help" -f -a "demo" -d 'Run the whole pipeline on throwaway local servers: simulate, transfer, aggregate, report'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and not __fish_seen_subcommand_from demo migrate transfer aggregate report status check prune rejected completions config simulate help" -f -a "migrate" -d 'Create or upgrade the PostgreSQL schema (also adopts the original service\'s tables)'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and not __fish_seen_subcommand_from demo migrate transfer aggregate report status check prune rejected completions config simulate help" -f -a "transfer" -d 'Drain the Redis stream into generation_events, exactly once'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and not __fish_seen_subcommand_from demo migrate transfer aggregate report status check prune rejected completions config simulate help" -f -a "aggregate" -d 'Roll events up by UTC hour (every hour with new events, or the hours given)'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and not __fish_seen_subcommand_from demo migrate transfer aggregate report status check prune rejected completions config simulate help" -f -a "report" -d 'Print a report: overview, trends, user, models, failures, peak-hours'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and not __fish_seen_subcommand_from demo migrate transfer aggregate report status check prune rejected completions config simulate help" -f -a "status" -d 'Is data flowing? Stream, transfer lag, rollup backlog, table sizes'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and not __fish_seen_subcommand_from demo migrate transfer aggregate report status check prune rejected completions config simulate help" -f -a "check" -d 'Alerting: exit 3 when a threshold is breached (failure rate, p95, lag, stale rollups)'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and not __fish_seen_subcommand_from demo migrate transfer aggregate report status check prune rejected completions config simulate help" -f -a "prune" -d 'Delete raw events (and dead letters) older than a cutoff; rollups are kept'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and not __fish_seen_subcommand_from demo migrate transfer aggregate report status check prune rejected completions config simulate help" -f -a "rejected" -d 'Dead letters: list them, show one as received, replay them after a fix, purge them'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and not __fish_seen_subcommand_from demo migrate transfer aggregate report status check prune rejected completions config simulate help" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell)'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and not __fish_seen_subcommand_from demo migrate transfer aggregate report status check prune rejected completions config simulate help" -f -a "config" -d 'Show every setting, its value (passwords masked) and where it came from'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and not __fish_seen_subcommand_from demo migrate transfer aggregate report status check prune rejected completions config simulate help" -f -a "simulate" -d 'Write realistic synthetic traffic into the stream, exactly as the service\'s producer does'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and not __fish_seen_subcommand_from demo migrate transfer aggregate report status check prune rejected completions config simulate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and __fish_seen_subcommand_from report" -f -a "overview" -d 'Totals, success rate, durations and users over the window (default 7 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and __fish_seen_subcommand_from report" -f -a "trends" -d 'One point per hour or local day, gaps filled with zeros (default 7 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and __fish_seen_subcommand_from report" -f -a "user" -d 'One user\'s generations, recent activity and failures (default 30 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and __fish_seen_subcommand_from report" -f -a "models" -d 'One row per model checkpoint (default 30 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and __fish_seen_subcommand_from report" -f -a "failures" -d 'Failures by error type and the failure rate per day (default 7 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and __fish_seen_subcommand_from report" -f -a "peak-hours" -d 'Average load per hour of day, busiest first (default 30 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and __fish_seen_subcommand_from report" -f -a "html" -d 'One self-contained HTML page: overview, hourly charts, failure rate per day, the weekday × hour heatmap, models and error types (default 7 days)'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and __fish_seen_subcommand_from rejected" -f -a "list" -d 'List dead letters, oldest first: entry ID, stream, when, why'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and __fish_seen_subcommand_from rejected" -f -a "show" -d 'Show one dead letter\'s fields exactly as received (bytes that are not printable UTF-8 escaped as \\xNN)'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and __fish_seen_subcommand_from rejected" -f -a "replay" -d 'Parse dead letters again with today\'s parser and store those that now pass, exactly once; the rest stay with today\'s reason'
complete -c genalytics -n "__fish_genalytics_using_subcommand help; and __fish_seen_subcommand_from rejected" -f -a "purge" -d 'Delete dead letters received before a cutoff'
