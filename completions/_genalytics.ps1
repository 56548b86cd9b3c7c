
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'genalytics' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'genalytics'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'genalytics' {
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('demo', 'demo', [CompletionResultType]::ParameterValue, 'Run the whole pipeline on throwaway local servers: simulate, transfer, aggregate, report')
            [CompletionResult]::new('migrate', 'migrate', [CompletionResultType]::ParameterValue, 'Create or upgrade the PostgreSQL schema (also adopts the original service''s tables)')
            [CompletionResult]::new('transfer', 'transfer', [CompletionResultType]::ParameterValue, 'Drain the Redis stream into generation_events, exactly once')
            [CompletionResult]::new('aggregate', 'aggregate', [CompletionResultType]::ParameterValue, 'Roll events up by UTC hour (every hour with new events, or the hours given)')
            [CompletionResult]::new('report', 'report', [CompletionResultType]::ParameterValue, 'Print a report: overview, trends, user, models, failures, peak-hours')
            [CompletionResult]::new('status', 'status', [CompletionResultType]::ParameterValue, 'Is data flowing? Stream, transfer lag, rollup backlog, table sizes')
            [CompletionResult]::new('check', 'check', [CompletionResultType]::ParameterValue, 'Alerting: exit 3 when a threshold is breached (failure rate, p95, lag, stale rollups)')
            [CompletionResult]::new('prune', 'prune', [CompletionResultType]::ParameterValue, 'Delete raw events (and dead letters) older than a cutoff; rollups are kept')
            [CompletionResult]::new('rejected', 'rejected', [CompletionResultType]::ParameterValue, 'Dead letters: list them, show one as received, replay them after a fix, purge them')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script (bash, zsh, fish, elvish, powershell)')
            [CompletionResult]::new('config', 'config', [CompletionResultType]::ParameterValue, 'Show every setting, its value (passwords masked) and where it came from')
            [CompletionResult]::new('simulate', 'simulate', [CompletionResultType]::ParameterValue, 'Write realistic synthetic traffic into the stream, exactly as the service''s producer does')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'genalytics;demo' {
            [CompletionResult]::new('--events', '--events', [CompletionResultType]::ParameterName, 'Stream entries to simulate over the last 24 hours')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--keep', '--keep', [CompletionResultType]::ParameterName, 'Leave the servers running and print the settings to try other commands on them')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;migrate' {
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--status', '--status', [CompletionResultType]::ParameterName, 'List applied and pending migrations instead of applying them')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;transfer' {
            [CompletionResult]::new('--batch-size', '--batch-size', [CompletionResultType]::ParameterName, 'Entries per transaction (and at most per read from Redis)')
            [CompletionResult]::new('--max-events', '--max-events', [CompletionResultType]::ParameterName, 'Stop after this many entries')
            [CompletionResult]::new('--keep', '--keep', [CompletionResultType]::ParameterName, 'Stored entries younger than this stay in the stream for live monitoring')
            [CompletionResult]::new('--parallel', '--parallel', [CompletionResultType]::ParameterName, 'With several streams (--stream more than once, or a pattern): how many to transfer at once; following, each stream has its own')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Summary format')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--follow', '--follow', [CompletionResultType]::ParameterName, 'Keep reading new entries until SIGINT/SIGTERM, committing at least every second; survives server restarts')
            [CompletionResult]::new('--wait', '--wait', [CompletionResultType]::ParameterName, 'Wait for a transfer already running instead of exiting')
            [CompletionResult]::new('--new-stream', '--new-stream', [CompletionResultType]::ParameterName, 'The key holds a new stream (recreated below the stored position): store all its entries, from its first')
            [CompletionResult]::new('--aggregate', '--aggregate', [CompletionResultType]::ParameterName, 'Also roll up hours that have ended: following, each hour as it ends and hours late events queued again at most once a minute (no aggregate timer needed); otherwise once, after')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;aggregate' {
            [CompletionResult]::new('--hour', '--hour', [CompletionResultType]::ParameterName, 'Roll up the hour containing this time (2026-11-27T14, RFC 3339 or naive UTC)')
            [CompletionResult]::new('--from', '--from', [CompletionResultType]::ParameterName, 'Backfill every hour from this time …')
            [CompletionResult]::new('--to', '--to', [CompletionResultType]::ParameterName, '… up to this time (exclusive)')
            [CompletionResult]::new('--jobs', '--jobs', [CompletionResultType]::ParameterName, 'Connections rolling up hours at once (default: the CPUs, at most 4)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Summary format')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--include-current', '--include-current', [CompletionResultType]::ParameterName, 'Also roll up the hour in progress')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;report' {
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('overview', 'overview', [CompletionResultType]::ParameterValue, 'Totals, success rate, durations and users over the window (default 7 days)')
            [CompletionResult]::new('trends', 'trends', [CompletionResultType]::ParameterValue, 'One point per hour or local day, gaps filled with zeros (default 7 days)')
            [CompletionResult]::new('user', 'user', [CompletionResultType]::ParameterValue, 'One user''s generations, recent activity and failures (default 30 days)')
            [CompletionResult]::new('models', 'models', [CompletionResultType]::ParameterValue, 'One row per model checkpoint (default 30 days)')
            [CompletionResult]::new('failures', 'failures', [CompletionResultType]::ParameterValue, 'Failures by error type and the failure rate per day (default 7 days)')
            [CompletionResult]::new('peak-hours', 'peak-hours', [CompletionResultType]::ParameterValue, 'Average load per hour of day, busiest first (default 30 days)')
            [CompletionResult]::new('html', 'html', [CompletionResultType]::ParameterValue, 'One self-contained HTML page: overview, hourly charts, failure rate per day, the weekday × hour heatmap, models and error types (default 7 days)')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'genalytics;report;overview' {
            [CompletionResult]::new('--days', '--days', [CompletionResultType]::ParameterName, 'Length of the window in days, ending at --until')
            [CompletionResult]::new('--until', '--until', [CompletionResultType]::ParameterName, 'End of the window (exclusive); default now. Fix it for reproducible reports')
            [CompletionResult]::new('--tz', '--tz', [CompletionResultType]::ParameterName, 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--section', '--section', [CompletionResultType]::ParameterName, 'With --format csv: which table of a report with several')
            [CompletionResult]::new('--watch', '--watch', [CompletionResultType]::ParameterName, 'Run the report again every INTERVAL (default 5s; --watch=10s) until Ctrl-C: redrawn in place on a terminal, one report after another in a pipe')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--compare', '--compare', [CompletionResultType]::ParameterName, 'Show each figure beside the previous window of the same length, and its change')
            [CompletionResult]::new('--materialized-only', '--materialized-only', [CompletionResultType]::ParameterName, 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from the stored events)')
            [CompletionResult]::new('--csv-raw', '--csv-raw', [CompletionResultType]::ParameterName, 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading '')')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;report;trends' {
            [CompletionResult]::new('--interval', '--interval', [CompletionResultType]::ParameterName, 'Points per hour or per day (in --tz)')
            [CompletionResult]::new('--days', '--days', [CompletionResultType]::ParameterName, 'Length of the window in days, ending at --until')
            [CompletionResult]::new('--until', '--until', [CompletionResultType]::ParameterName, 'End of the window (exclusive); default now. Fix it for reproducible reports')
            [CompletionResult]::new('--tz', '--tz', [CompletionResultType]::ParameterName, 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--section', '--section', [CompletionResultType]::ParameterName, 'With --format csv: which table of a report with several')
            [CompletionResult]::new('--watch', '--watch', [CompletionResultType]::ParameterName, 'Run the report again every INTERVAL (default 5s; --watch=10s) until Ctrl-C: redrawn in place on a terminal, one report after another in a pipe')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--materialized-only', '--materialized-only', [CompletionResultType]::ParameterName, 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from the stored events)')
            [CompletionResult]::new('--csv-raw', '--csv-raw', [CompletionResultType]::ParameterName, 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading '')')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;report;user' {
            [CompletionResult]::new('--days', '--days', [CompletionResultType]::ParameterName, 'Length of the window in days, ending at --until')
            [CompletionResult]::new('--until', '--until', [CompletionResultType]::ParameterName, 'End of the window (exclusive); default now. Fix it for reproducible reports')
            [CompletionResult]::new('--tz', '--tz', [CompletionResultType]::ParameterName, 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--section', '--section', [CompletionResultType]::ParameterName, 'With --format csv: which table of a report with several')
            [CompletionResult]::new('--watch', '--watch', [CompletionResultType]::ParameterName, 'Run the report again every INTERVAL (default 5s; --watch=10s) until Ctrl-C: redrawn in place on a terminal, one report after another in a pipe')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--materialized-only', '--materialized-only', [CompletionResultType]::ParameterName, 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from the stored events)')
            [CompletionResult]::new('--csv-raw', '--csv-raw', [CompletionResultType]::ParameterName, 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading '')')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;report;models' {
            [CompletionResult]::new('--days', '--days', [CompletionResultType]::ParameterName, 'Length of the window in days, ending at --until')
            [CompletionResult]::new('--until', '--until', [CompletionResultType]::ParameterName, 'End of the window (exclusive); default now. Fix it for reproducible reports')
            [CompletionResult]::new('--tz', '--tz', [CompletionResultType]::ParameterName, 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--section', '--section', [CompletionResultType]::ParameterName, 'With --format csv: which table of a report with several')
            [CompletionResult]::new('--watch', '--watch', [CompletionResultType]::ParameterName, 'Run the report again every INTERVAL (default 5s; --watch=10s) until Ctrl-C: redrawn in place on a terminal, one report after another in a pipe')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--materialized-only', '--materialized-only', [CompletionResultType]::ParameterName, 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from the stored events)')
            [CompletionResult]::new('--csv-raw', '--csv-raw', [CompletionResultType]::ParameterName, 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading '')')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;report;failures' {
            [CompletionResult]::new('--days', '--days', [CompletionResultType]::ParameterName, 'Length of the window in days, ending at --until')
            [CompletionResult]::new('--until', '--until', [CompletionResultType]::ParameterName, 'End of the window (exclusive); default now. Fix it for reproducible reports')
            [CompletionResult]::new('--tz', '--tz', [CompletionResultType]::ParameterName, 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--section', '--section', [CompletionResultType]::ParameterName, 'With --format csv: which table of a report with several')
            [CompletionResult]::new('--watch', '--watch', [CompletionResultType]::ParameterName, 'Run the report again every INTERVAL (default 5s; --watch=10s) until Ctrl-C: redrawn in place on a terminal, one report after another in a pipe')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--materialized-only', '--materialized-only', [CompletionResultType]::ParameterName, 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from the stored events)')
            [CompletionResult]::new('--csv-raw', '--csv-raw', [CompletionResultType]::ParameterName, 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading '')')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;report;peak-hours' {
            [CompletionResult]::new('--by', '--by', [CompletionResultType]::ParameterName, 'Split each hour of day by weekday (a heatmap in a table)')
            [CompletionResult]::new('--sort', '--sort', [CompletionResultType]::ParameterName, 'Busiest slots first, or in hour order')
            [CompletionResult]::new('--days', '--days', [CompletionResultType]::ParameterName, 'Length of the window in days, ending at --until')
            [CompletionResult]::new('--until', '--until', [CompletionResultType]::ParameterName, 'End of the window (exclusive); default now. Fix it for reproducible reports')
            [CompletionResult]::new('--tz', '--tz', [CompletionResultType]::ParameterName, 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--section', '--section', [CompletionResultType]::ParameterName, 'With --format csv: which table of a report with several')
            [CompletionResult]::new('--watch', '--watch', [CompletionResultType]::ParameterName, 'Run the report again every INTERVAL (default 5s; --watch=10s) until Ctrl-C: redrawn in place on a terminal, one report after another in a pipe')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--materialized-only', '--materialized-only', [CompletionResultType]::ParameterName, 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from the stored events)')
            [CompletionResult]::new('--csv-raw', '--csv-raw', [CompletionResultType]::ParameterName, 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading '')')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;report;html' {
            [CompletionResult]::new('--days', '--days', [CompletionResultType]::ParameterName, 'Length of the window in days, ending at --until')
            [CompletionResult]::new('--until', '--until', [CompletionResultType]::ParameterName, 'End of the window (exclusive); default now. Fix it for reproducible reports')
            [CompletionResult]::new('--tz', '--tz', [CompletionResultType]::ParameterName, 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin')
            [CompletionResult]::new('--failure-limit', '--failure-limit', [CompletionResultType]::ParameterName, 'Draw this failure rate (percent) as a limit on the daily chart')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Write the page to this file (atomically) instead of stdout')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Write the page to this file (atomically) instead of stdout')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--materialized-only', '--materialized-only', [CompletionResultType]::ParameterName, 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from the stored events)')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;report;help' {
            [CompletionResult]::new('overview', 'overview', [CompletionResultType]::ParameterValue, 'Totals, success rate, durations and users over the window (default 7 days)')
            [CompletionResult]::new('trends', 'trends', [CompletionResultType]::ParameterValue, 'One point per hour or local day, gaps filled with zeros (default 7 days)')
            [CompletionResult]::new('user', 'user', [CompletionResultType]::ParameterValue, 'One user''s generations, recent activity and failures (default 30 days)')
            [CompletionResult]::new('models', 'models', [CompletionResultType]::ParameterValue, 'One row per model checkpoint (default 30 days)')
            [CompletionResult]::new('failures', 'failures', [CompletionResultType]::ParameterValue, 'Failures by error type and the failure rate per day (default 7 days)')
            [CompletionResult]::new('peak-hours', 'peak-hours', [CompletionResultType]::ParameterValue, 'Average load per hour of day, busiest first (default 30 days)')
            [CompletionResult]::new('html', 'html', [CompletionResultType]::ParameterValue, 'One self-contained HTML page: overview, hourly charts, failure rate per day, the weekday × hour heatmap, models and error types (default 7 days)')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'genalytics;report;help;overview' {
            break
        }
        'genalytics;report;help;trends' {
            break
        }
        'genalytics;report;help;user' {
            break
        }
        'genalytics;report;help;models' {
            break
        }
        'genalytics;report;help;failures' {
            break
        }
        'genalytics;report;help;peak-hours' {
            break
        }
        'genalytics;report;help;html' {
            break
        }
        'genalytics;report;help;help' {
            break
        }
        'genalytics;status' {
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Write to this file instead of stdout, atomically (a temporary file in the same directory, renamed over it), readable by all: what the textfile collector of Prometheus'' node exporter needs')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Write to this file instead of stdout, atomically (a temporary file in the same directory, renamed over it), readable by all: what the textfile collector of Prometheus'' node exporter needs')
            [CompletionResult]::new('--stale-grace', '--stale-grace', [CompletionResultType]::ParameterName, 'A complete hour counts as stale once it has waited this long for its rollup (since it ended, or since a late event queued it)')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;check' {
            [CompletionResult]::new('--hours', '--hours', [CompletionResultType]::ParameterName, 'Window of the failure-rate and p95 checks, in hours (default 1)')
            [CompletionResult]::new('--days', '--days', [CompletionResultType]::ParameterName, 'Window of the failure-rate and p95 checks, in days')
            [CompletionResult]::new('--max-failure-rate', '--max-failure-rate', [CompletionResultType]::ParameterName, 'Breach (critical) when failed / completions exceeds this percentage')
            [CompletionResult]::new('--crit-failure-rate', '--crit-failure-rate', [CompletionResultType]::ParameterName, 'Breach (critical) when failed / completions exceeds this percentage')
            [CompletionResult]::new('--max-p95', '--max-p95', [CompletionResultType]::ParameterName, 'Breach (critical) when the p95 of successful durations exceeds this (e.g. 1500ms, 90s, 2m)')
            [CompletionResult]::new('--crit-p95', '--crit-p95', [CompletionResultType]::ParameterName, 'Breach (critical) when the p95 of successful durations exceeds this (e.g. 1500ms, 90s, 2m)')
            [CompletionResult]::new('--max-lag', '--max-lag', [CompletionResultType]::ParameterName, 'Breach (critical) when the oldest entry not yet transferred is older than this')
            [CompletionResult]::new('--crit-lag', '--crit-lag', [CompletionResultType]::ParameterName, 'Breach (critical) when the oldest entry not yet transferred is older than this')
            [CompletionResult]::new('--max-stale-hours', '--max-stale-hours', [CompletionResultType]::ParameterName, 'Breach (critical) when more complete hours than this await their rollup')
            [CompletionResult]::new('--crit-stale-hours', '--crit-stale-hours', [CompletionResultType]::ParameterName, 'Breach (critical) when more complete hours than this await their rollup')
            [CompletionResult]::new('--warn-failure-rate', '--warn-failure-rate', [CompletionResultType]::ParameterName, 'Warning (not a breach) when the failure rate exceeds this percentage')
            [CompletionResult]::new('--warn-p95', '--warn-p95', [CompletionResultType]::ParameterName, 'Warning when the p95 duration exceeds this')
            [CompletionResult]::new('--warn-lag', '--warn-lag', [CompletionResultType]::ParameterName, 'Warning when the oldest entry not yet transferred is older than this')
            [CompletionResult]::new('--warn-stale-hours', '--warn-stale-hours', [CompletionResultType]::ParameterName, 'Warning when more complete hours than this await their rollup')
            [CompletionResult]::new('--stale-grace', '--stale-grace', [CompletionResultType]::ParameterName, 'A complete hour counts as stale once it has waited this long for its rollup (since it ended, or since a late event queued it)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Output format (exit codes stay 0 and 3)')
            [CompletionResult]::new('-t', '-t', [CompletionResultType]::ParameterName, 'Give up after this long (a server that accepts and never answers, a lock): UNKNOWN with --nagios, else exit 1; 0 waits forever')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Give up after this long (a server that accepts and never answers, a lock): UNKNOWN with --nagios, else exit 1; 0 waits forever')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--nagios', '--nagios', [CompletionResultType]::ParameterName, 'Speak the Monitoring Plugins protocol (Nagios, Icinga, Naemon): one status line with performance data; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;prune' {
            [CompletionResult]::new('--older-than', '--older-than', [CompletionResultType]::ParameterName, 'Delete raw events older than this (e.g. 90d, 36h, 1h30m, 2w)')
            [CompletionResult]::new('--batch-size', '--batch-size', [CompletionResultType]::ParameterName, 'Rows deleted per transaction')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Summary format')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--dry-run', '--dry-run', [CompletionResultType]::ParameterName, 'Count what would be deleted; delete nothing')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;rejected' {
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'List dead letters, oldest first: entry ID, stream, when, why')
            [CompletionResult]::new('show', 'show', [CompletionResultType]::ParameterValue, 'Show one dead letter''s fields exactly as received (bytes that are not printable UTF-8 escaped as \xNN)')
            [CompletionResult]::new('replay', 'replay', [CompletionResultType]::ParameterValue, 'Parse dead letters again with today''s parser and store those that now pass, exactly once; the rest stay with today''s reason')
            [CompletionResult]::new('purge', 'purge', [CompletionResultType]::ParameterValue, 'Delete dead letters received before a cutoff')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'genalytics;rejected;list' {
            [CompletionResult]::new('--reason', '--reason', [CompletionResultType]::ParameterName, 'Only letters whose reason contains this text (any case)')
            [CompletionResult]::new('--since', '--since', [CompletionResultType]::ParameterName, 'Only letters received at or after this time')
            [CompletionResult]::new('--until', '--until', [CompletionResultType]::ParameterName, 'Only letters received before this time')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'Show at most this many (0: all)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'format')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--csv-raw', '--csv-raw', [CompletionResultType]::ParameterName, 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading '')')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;rejected;show' {
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'format')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;rejected;replay' {
            [CompletionResult]::new('--reason', '--reason', [CompletionResultType]::ParameterName, 'Only letters whose reason contains this text (any case)')
            [CompletionResult]::new('--since', '--since', [CompletionResultType]::ParameterName, 'Only letters received at or after this time')
            [CompletionResult]::new('--until', '--until', [CompletionResultType]::ParameterName, 'Only letters received before this time')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'format')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--all', '--all', [CompletionResultType]::ParameterName, 'Replay every letter (that the filters match)')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;rejected;purge' {
            [CompletionResult]::new('--older-than', '--older-than', [CompletionResultType]::ParameterName, 'Delete letters older than this (e.g. 30d, 2w; 0 for all)')
            [CompletionResult]::new('--reason', '--reason', [CompletionResultType]::ParameterName, 'Only letters whose reason contains this text (any case)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'format')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;rejected;help' {
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'List dead letters, oldest first: entry ID, stream, when, why')
            [CompletionResult]::new('show', 'show', [CompletionResultType]::ParameterValue, 'Show one dead letter''s fields exactly as received (bytes that are not printable UTF-8 escaped as \xNN)')
            [CompletionResult]::new('replay', 'replay', [CompletionResultType]::ParameterValue, 'Parse dead letters again with today''s parser and store those that now pass, exactly once; the rest stay with today''s reason')
            [CompletionResult]::new('purge', 'purge', [CompletionResultType]::ParameterValue, 'Delete dead letters received before a cutoff')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'genalytics;rejected;help;list' {
            break
        }
        'genalytics;rejected;help;show' {
            break
        }
        'genalytics;rejected;help;replay' {
            break
        }
        'genalytics;rejected;help;purge' {
            break
        }
        'genalytics;rejected;help;help' {
            break
        }
        'genalytics;completions' {
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;config' {
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;simulate' {
            [CompletionResult]::new('--events', '--events', [CompletionResultType]::ParameterName, 'Stream entries to write (requests, completions and cancellations together)')
            [CompletionResult]::new('--hours', '--hours', [CompletionResultType]::ParameterName, 'Length of the simulated window, ending at --end')
            [CompletionResult]::new('--users', '--users', [CompletionResultType]::ParameterName, 'Distinct users generating traffic')
            [CompletionResult]::new('--seed', '--seed', [CompletionResultType]::ParameterName, 'Seed for reproducible traffic (random when omitted; the summary prints it)')
            [CompletionResult]::new('--end', '--end', [CompletionResultType]::ParameterName, 'End of the window (exclusive); default now')
            [CompletionResult]::new('--maxlen', '--maxlen', [CompletionResultType]::ParameterName, 'Stream length cap as the producer applies it (XADD MAXLEN ~); 0 keeps everything')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis connection URL (rediss:// for TLS)')
            [CompletionResult]::new('--redis-sentinel', '--redis-sentinel', [CompletionResultType]::ParameterName, 'Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor')
            [CompletionResult]::new('--redis-ns', '--redis-ns', [CompletionResultType]::ParameterName, 'Namespace of the stream key: {ns}:generation_events:stream')
            [CompletionResult]::new('--stream', '--stream', [CompletionResultType]::ParameterName, 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once')
            [CompletionResult]::new('--stream-pattern', '--stream-pattern', [CompletionResultType]::ParameterName, 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed')
            [CompletionResult]::new('--raw-retention', '--raw-retention', [CompletionResultType]::ParameterName, 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'Styled tables (bold headers): auto on a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers')
            [CompletionResult]::new('--redis-cluster', '--redis-cluster', [CompletionResultType]::ParameterName, 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more to stderr (-v progress, -vv debugging)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'genalytics;help' {
            [CompletionResult]::new('demo', 'demo', [CompletionResultType]::ParameterValue, 'Run the whole pipeline on throwaway local servers: simulate, transfer, aggregate, report')
            [CompletionResult]::new('migrate', 'migrate', [CompletionResultType]::ParameterValue, 'Create or upgrade the PostgreSQL schema (also adopts the original service''s tables)')
            [CompletionResult]::new('transfer', 'transfer', [CompletionResultType]::ParameterValue, 'Drain the Redis stream into generation_events, exactly once')
            [CompletionResult]::new('aggregate', 'aggregate', [CompletionResultType]::ParameterValue, 'Roll events up by UTC hour (every hour with new events, or the hours given)')
            [CompletionResult]::new('report', 'report', [CompletionResultType]::ParameterValue, 'Print a report: overview, trends, user, models, failures, peak-hours')
            [CompletionResult]::new('status', 'status', [CompletionResultType]::ParameterValue, 'Is data flowing? Stream, transfer lag, rollup backlog, table sizes')
            [CompletionResult]::new('check', 'check', [CompletionResultType]::ParameterValue, 'Alerting: exit 3 when a threshold is breached (failure rate, p95, lag, stale rollups)')
            [CompletionResult]::new('prune', 'prune', [CompletionResultType]::ParameterValue, 'Delete raw events (and dead letters) older than a cutoff; rollups are kept')
            [CompletionResult]::new('rejected', 'rejected', [CompletionResultType]::ParameterValue, 'Dead letters: list them, show one as received, replay them after a fix, purge them')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script (bash, zsh, fish, elvish, powershell)')
            [CompletionResult]::new('config', 'config', [CompletionResultType]::ParameterValue, 'Show every setting, its value (passwords masked) and where it came from')
            [CompletionResult]::new('simulate', 'simulate', [CompletionResultType]::ParameterValue, 'Write realistic synthetic traffic into the stream, exactly as the service''s producer does')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'genalytics;help;demo' {
            break
        }
        'genalytics;help;migrate' {
            break
        }
        'genalytics;help;transfer' {
            break
        }
        'genalytics;help;aggregate' {
            break
        }
        'genalytics;help;report' {
            [CompletionResult]::new('overview', 'overview', [CompletionResultType]::ParameterValue, 'Totals, success rate, durations and users over the window (default 7 days)')
            [CompletionResult]::new('trends', 'trends', [CompletionResultType]::ParameterValue, 'One point per hour or local day, gaps filled with zeros (default 7 days)')
            [CompletionResult]::new('user', 'user', [CompletionResultType]::ParameterValue, 'One user''s generations, recent activity and failures (default 30 days)')
            [CompletionResult]::new('models', 'models', [CompletionResultType]::ParameterValue, 'One row per model checkpoint (default 30 days)')
            [CompletionResult]::new('failures', 'failures', [CompletionResultType]::ParameterValue, 'Failures by error type and the failure rate per day (default 7 days)')
            [CompletionResult]::new('peak-hours', 'peak-hours', [CompletionResultType]::ParameterValue, 'Average load per hour of day, busiest first (default 30 days)')
            [CompletionResult]::new('html', 'html', [CompletionResultType]::ParameterValue, 'One self-contained HTML page: overview, hourly charts, failure rate per day, the weekday × hour heatmap, models and error types (default 7 days)')
            break
        }
        'genalytics;help;report;overview' {
            break
        }
        'genalytics;help;report;trends' {
            break
        }
        'genalytics;help;report;user' {
            break
        }
        'genalytics;help;report;models' {
            break
        }
        'genalytics;help;report;failures' {
            break
        }
        'genalytics;help;report;peak-hours' {
            break
        }
        'genalytics;help;report;html' {
            break
        }
        'genalytics;help;status' {
            break
        }
        'genalytics;help;check' {
            break
        }
        'genalytics;help;prune' {
            break
        }
        'genalytics;help;rejected' {
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'List dead letters, oldest first: entry ID, stream, when, why')
            [CompletionResult]::new('show', 'show', [CompletionResultType]::ParameterValue, 'Show one dead letter''s fields exactly as received (bytes that are not printable UTF-8 escaped as \xNN)')
            [CompletionResult]::new('replay', 'replay', [CompletionResultType]::ParameterValue, 'Parse dead letters again with today''s parser and store those that now pass, exactly once; the rest stay with today''s reason')
            [CompletionResult]::new('purge', 'purge', [CompletionResultType]::ParameterValue, 'Delete dead letters received before a cutoff')
            break
        }
        'genalytics;help;rejected;list' {
            break
        }
        'genalytics;help;rejected;show' {
            break
        }
        'genalytics;help;rejected;replay' {
            break
        }
        'genalytics;help;rejected;purge' {
            break
        }
        'genalytics;help;completions' {
            break
        }
        'genalytics;help;config' {
            break
        }
        'genalytics;help;simulate' {
            break
        }
        'genalytics;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
