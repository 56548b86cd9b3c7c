
use builtin;
use str;

set edit:completion:arg-completer[genalytics] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'genalytics'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'genalytics'= {
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
            cand demo 'Run the whole pipeline on throwaway local servers: simulate, transfer, aggregate, report'
            cand migrate 'Create or upgrade the PostgreSQL schema (also adopts the original service''s tables)'
            cand transfer 'Drain the Redis stream into generation_events, exactly once'
            cand aggregate 'Roll events up by UTC hour (every hour with new events, or the hours given)'
            cand report 'Print a report: overview, trends, user, models, failures, peak-hours'
            cand status 'Is data flowing? Stream, transfer lag, rollup backlog, table sizes'
            cand check 'Alerting: exit 3 when a threshold is breached (failure rate, p95, lag, stale rollups)'
            cand prune 'Delete raw events (and dead letters) older than a cutoff; rollups are kept'
            cand rejected 'Dead letters: list them, show one as received, replay them after a fix, purge them'
            cand completions 'Print a shell completion script (bash, zsh, fish, elvish, powershell)'
            cand simulate 'Write realistic synthetic traffic into the stream, exactly as the service''s producer does'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'genalytics;demo'= {
            cand --events 'Stream entries to simulate over the last 24 hours'
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --keep 'Leave the servers running and print the settings to try other commands on them'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'genalytics;migrate'= {
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --status 'List applied and pending migrations instead of applying them'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'genalytics;transfer'= {
            cand --batch-size 'Entries per transaction (and at most per read from Redis)'
            cand --max-events 'Stop after this many entries'
            cand --keep 'Stored entries younger than this stay in the stream for live monitoring'
            cand --parallel 'With several streams (--stream more than once, or a pattern): how many to transfer at once; following, each stream has its own'
            cand --format 'Summary format'
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --follow 'Keep reading new entries until SIGINT/SIGTERM, committing at least every second; survives server restarts'
            cand --wait 'Wait for a transfer already running instead of exiting'
            cand --new-stream 'The key holds a new stream (recreated below the stored position): store all its entries, from its first'
            cand --aggregate 'Also roll up hours that have ended: following, each hour as it ends and hours late events queued again at most once a minute (no aggregate timer needed); otherwise once, after'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'genalytics;aggregate'= {
            cand --hour 'Roll up the hour containing this time (2026-11-27T14, RFC 3339 or naive UTC)'
            cand --from 'Backfill every hour from this time …'
            cand --to '… up to this time (exclusive)'
            cand --jobs 'Connections rolling up hours at once (default: the CPUs, at most 4)'
            cand --format 'Summary format'
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --include-current 'Also roll up the hour in progress'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'genalytics;report'= {
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
            cand overview 'Totals, success rate, durations and users over the window (default 7 days)'
            cand trends 'One point per hour or local day, gaps filled with zeros (default 7 days)'
            cand user 'One user''s generations, recent activity and failures (default 30 days)'
            cand models 'One row per model checkpoint (default 30 days)'
            cand failures 'Failures by error type and the failure rate per day (default 7 days)'
            cand peak-hours 'Average load per hour of day, busiest first (default 30 days)'
            cand html 'One self-contained HTML page: overview, hourly charts, failure rate per day, the weekday × hour heatmap, models and error types (default 7 days)'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'genalytics;report;overview'= {
            cand --days 'Length of the window in days, ending at --until'
            cand --until 'End of the window (exclusive); default now. Fix it for reproducible reports'
            cand --tz 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin'
            cand --format 'Output format'
            cand --section 'With --format csv: which table of a report with several'
            cand --watch 'Run the report again every INTERVAL (default 5s; --watch=10s) until Ctrl-C: redrawn in place on a terminal, one report after another in a pipe'
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --compare 'Show each figure beside the previous window of the same length, and its change'
            cand --materialized-only 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from raw events)'
            cand --csv-raw 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading '')'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'genalytics;report;trends'= {
            cand --interval 'Points per hour or per day (in --tz)'
            cand --days 'Length of the window in days, ending at --until'
            cand --until 'End of the window (exclusive); default now. Fix it for reproducible reports'
            cand --tz 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin'
            cand --format 'Output format'
            cand --section 'With --format csv: which table of a report with several'
            cand --watch 'Run the report again every INTERVAL (default 5s; --watch=10s) until Ctrl-C: redrawn in place on a terminal, one report after another in a pipe'
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --materialized-only 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from raw events)'
            cand --csv-raw 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading '')'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'genalytics;report;user'= {
            cand --days 'Length of the window in days, ending at --until'
            cand --until 'End of the window (exclusive); default now. Fix it for reproducible reports'
            cand --tz 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin'
            cand --format 'Output format'
            cand --section 'With --format csv: which table of a report with several'
            cand --watch 'Run the report again every INTERVAL (default 5s; --watch=10s) until Ctrl-C: redrawn in place on a terminal, one report after another in a pipe'
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --materialized-only 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from raw events)'
            cand --csv-raw 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading '')'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'genalytics;report;models'= {
            cand --days 'Length of the window in days, ending at --until'
            cand --until 'End of the window (exclusive); default now. Fix it for reproducible reports'
            cand --tz 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin'
            cand --format 'Output format'
            cand --section 'With --format csv: which table of a report with several'
            cand --watch 'Run the report again every INTERVAL (default 5s; --watch=10s) until Ctrl-C: redrawn in place on a terminal, one report after another in a pipe'
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --materialized-only 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from raw events)'
            cand --csv-raw 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading '')'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'genalytics;report;failures'= {
            cand --days 'Length of the window in days, ending at --until'
            cand --until 'End of the window (exclusive); default now. Fix it for reproducible reports'
            cand --tz 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin'
            cand --format 'Output format'
            cand --section 'With --format csv: which table of a report with several'
            cand --watch 'Run the report again every INTERVAL (default 5s; --watch=10s) until Ctrl-C: redrawn in place on a terminal, one report after another in a pipe'
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --materialized-only 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from raw events)'
            cand --csv-raw 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading '')'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'genalytics;report;peak-hours'= {
            cand --by 'Split each hour of day by weekday (a heatmap in a table)'
            cand --sort 'Busiest slots first, or in hour order'
            cand --days 'Length of the window in days, ending at --until'
            cand --until 'End of the window (exclusive); default now. Fix it for reproducible reports'
            cand --tz 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin'
            cand --format 'Output format'
            cand --section 'With --format csv: which table of a report with several'
            cand --watch 'Run the report again every INTERVAL (default 5s; --watch=10s) until Ctrl-C: redrawn in place on a terminal, one report after another in a pipe'
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --materialized-only 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from raw events)'
            cand --csv-raw 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading '')'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'genalytics;report;html'= {
            cand --days 'Length of the window in days, ending at --until'
            cand --until 'End of the window (exclusive); default now. Fix it for reproducible reports'
            cand --tz 'IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin'
            cand --failure-limit 'Draw this failure rate (percent) as a limit on the daily chart'
            cand -o 'Write the page to this file (atomically) instead of stdout'
            cand --output 'Write the page to this file (atomically) instead of stdout'
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --materialized-only 'Read hourly rollups alone: leave out events of hours not rolled up yet (by default they are counted from raw events)'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'genalytics;report;help'= {
            cand overview 'Totals, success rate, durations and users over the window (default 7 days)'
            cand trends 'One point per hour or local day, gaps filled with zeros (default 7 days)'
            cand user 'One user''s generations, recent activity and failures (default 30 days)'
            cand models 'One row per model checkpoint (default 30 days)'
            cand failures 'Failures by error type and the failure rate per day (default 7 days)'
            cand peak-hours 'Average load per hour of day, busiest first (default 30 days)'
            cand html 'One self-contained HTML page: overview, hourly charts, failure rate per day, the weekday × hour heatmap, models and error types (default 7 days)'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'genalytics;report;help;overview'= {
        }
        &'genalytics;report;help;trends'= {
        }
        &'genalytics;report;help;user'= {
        }
        &'genalytics;report;help;models'= {
        }
        &'genalytics;report;help;failures'= {
        }
        &'genalytics;report;help;peak-hours'= {
        }
        &'genalytics;report;help;html'= {
        }
        &'genalytics;report;help;help'= {
        }
        &'genalytics;status'= {
            cand --format 'Output format'
            cand -o 'Write to this file instead of stdout, atomically (a temporary file in the same directory, renamed over it), readable by all: what the textfile collector of Prometheus'' node exporter needs'
            cand --output 'Write to this file instead of stdout, atomically (a temporary file in the same directory, renamed over it), readable by all: what the textfile collector of Prometheus'' node exporter needs'
            cand --stale-grace 'A complete hour counts as stale once it has waited this long for its rollup (since it ended, or since a late event queued it)'
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'genalytics;check'= {
            cand --hours 'Window of the failure-rate and p95 checks, in hours (default 1)'
            cand --days 'Window of the failure-rate and p95 checks, in days'
            cand --max-failure-rate 'Breach (critical) when failed / completions exceeds this percentage'
            cand --crit-failure-rate 'Breach (critical) when failed / completions exceeds this percentage'
            cand --max-p95 'Breach (critical) when the p95 of successful durations exceeds this (e.g. 1500ms, 90s, 2m)'
            cand --crit-p95 'Breach (critical) when the p95 of successful durations exceeds this (e.g. 1500ms, 90s, 2m)'
            cand --max-lag 'Breach (critical) when the oldest entry not yet transferred is older than this'
            cand --crit-lag 'Breach (critical) when the oldest entry not yet transferred is older than this'
            cand --max-stale-hours 'Breach (critical) when more complete hours than this await their rollup'
            cand --crit-stale-hours 'Breach (critical) when more complete hours than this await their rollup'
            cand --warn-failure-rate 'Warning (not a breach) when the failure rate exceeds this percentage'
            cand --warn-p95 'Warning when the p95 duration exceeds this'
            cand --warn-lag 'Warning when the oldest entry not yet transferred is older than this'
            cand --warn-stale-hours 'Warning when more complete hours than this await their rollup'
            cand --stale-grace 'A complete hour counts as stale once it has waited this long for its rollup (since it ended, or since a late event queued it)'
            cand --format 'Output format (exit codes stay 0 and 3)'
            cand -t 'Give up after this long (a server that accepts and never answers, a lock): UNKNOWN with --nagios, else exit 1; 0 waits forever'
            cand --timeout 'Give up after this long (a server that accepts and never answers, a lock): UNKNOWN with --nagios, else exit 1; 0 waits forever'
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --nagios 'Speak the Monitoring Plugins protocol (Nagios, Icinga, Naemon): one status line with performance data; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'genalytics;prune'= {
            cand --older-than 'Delete raw events older than this (e.g. 90d, 36h, 1h30m, 2w)'
            cand --batch-size 'Rows deleted per transaction'
            cand --format 'Summary format'
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --dry-run 'Count what would be deleted; delete nothing'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'genalytics;rejected'= {
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
            cand list 'List dead letters, oldest first: entry ID, stream, when, why'
            cand show 'Show one dead letter''s fields exactly as received (bytes that are not printable UTF-8 escaped as \xNN)'
            cand replay 'Parse dead letters again with today''s parser and store those that now pass, exactly once; the rest stay with today''s reason'
            cand purge 'Delete dead letters received before a cutoff'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'genalytics;rejected;list'= {
            cand --reason 'Only letters whose reason contains this text (any case)'
            cand --since 'Only letters received at or after this time'
            cand --until 'Only letters received before this time'
            cand --limit 'Show at most this many (0: all)'
            cand --format 'format'
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --csv-raw 'With --format csv: text exactly as stored, even where a spreadsheet would run it as a formula (by default such cells get a leading '')'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'genalytics;rejected;show'= {
            cand --format 'format'
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'genalytics;rejected;replay'= {
            cand --reason 'Only letters whose reason contains this text (any case)'
            cand --since 'Only letters received at or after this time'
            cand --until 'Only letters received before this time'
            cand --format 'format'
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --all 'Replay every letter (that the filters match)'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'genalytics;rejected;purge'= {
            cand --older-than 'Delete letters older than this (e.g. 30d, 2w; 0 for all)'
            cand --reason 'Only letters whose reason contains this text (any case)'
            cand --format 'format'
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'genalytics;rejected;help'= {
            cand list 'List dead letters, oldest first: entry ID, stream, when, why'
            cand show 'Show one dead letter''s fields exactly as received (bytes that are not printable UTF-8 escaped as \xNN)'
            cand replay 'Parse dead letters again with today''s parser and store those that now pass, exactly once; the rest stay with today''s reason'
            cand purge 'Delete dead letters received before a cutoff'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'genalytics;rejected;help;list'= {
        }
        &'genalytics;rejected;help;show'= {
        }
        &'genalytics;rejected;help;replay'= {
        }
        &'genalytics;rejected;help;purge'= {
        }
        &'genalytics;rejected;help;help'= {
        }
        &'genalytics;completions'= {
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'genalytics;simulate'= {
            cand --events 'Stream entries to write (requests, completions and cancellations together)'
            cand --hours 'Length of the simulated window, ending at --end'
            cand --users 'Distinct users generating traffic'
            cand --seed 'Seed for reproducible traffic (random when omitted; the summary prints it)'
            cand --end 'End of the window (exclusive); default now'
            cand --maxlen 'Stream length cap as the producer applies it (XADD MAXLEN ~); 0 keeps everything'
            cand --database-url 'PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require'
            cand --redis-url 'Redis connection URL (rediss:// for TLS)'
            cand --redis-ns 'Namespace of the stream key: {ns}:generation_events:stream'
            cand --stream 'Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once'
            cand --stream-pattern 'For transfer: every stream whose key matches this Redis glob (e.g. ''genonaut:generation_events:stream:*''); more than once allowed'
            cand --raw-retention 'How long raw events are kept (prune''s --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition'
            cand --log-format 'Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers'
            cand --redis-cluster 'Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated'
            cand -v 'Log more to stderr (-v progress, -vv debugging)'
            cand --verbose 'Log more to stderr (-v progress, -vv debugging)'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'genalytics;help'= {
            cand demo 'Run the whole pipeline on throwaway local servers: simulate, transfer, aggregate, report'
            cand migrate 'Create or upgrade the PostgreSQL schema (also adopts the original service''s tables)'
            cand transfer 'Drain the Redis stream into generation_events, exactly once'
            cand aggregate 'Roll events up by UTC hour (every hour with new events, or the hours given)'
            cand report 'Print a report: overview, trends, user, models, failures, peak-hours'
            cand status 'Is data flowing? Stream, transfer lag, rollup backlog, table sizes'
            cand check 'Alerting: exit 3 when a threshold is breached (failure rate, p95, lag, stale rollups)'
            cand prune 'Delete raw events (and dead letters) older than a cutoff; rollups are kept'
            cand rejected 'Dead letters: list them, show one as received, replay them after a fix, purge them'
            cand completions 'Print a shell completion script (bash, zsh, fish, elvish, powershell)'
            cand simulate 'Write realistic synthetic traffic into the stream, exactly as the service''s producer does'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'genalytics;help;demo'= {
        }
        &'genalytics;help;migrate'= {
        }
        &'genalytics;help;transfer'= {
        }
        &'genalytics;help;aggregate'= {
        }
        &'genalytics;help;report'= {
            cand overview 'Totals, success rate, durations and users over the window (default 7 days)'
            cand trends 'One point per hour or local day, gaps filled with zeros (default 7 days)'
            cand user 'One user''s generations, recent activity and failures (default 30 days)'
            cand models 'One row per model checkpoint (default 30 days)'
            cand failures 'Failures by error type and the failure rate per day (default 7 days)'
            cand peak-hours 'Average load per hour of day, busiest first (default 30 days)'
            cand html 'One self-contained HTML page: overview, hourly charts, failure rate per day, the weekday × hour heatmap, models and error types (default 7 days)'
        }
        &'genalytics;help;report;overview'= {
        }
        &'genalytics;help;report;trends'= {
        }
        &'genalytics;help;report;user'= {
        }
        &'genalytics;help;report;models'= {
        }
        &'genalytics;help;report;failures'= {
        }
        &'genalytics;help;report;peak-hours'= {
        }
        &'genalytics;help;report;html'= {
        }
        &'genalytics;help;status'= {
        }
        &'genalytics;help;check'= {
        }
        &'genalytics;help;prune'= {
        }
        &'genalytics;help;rejected'= {
            cand list 'List dead letters, oldest first: entry ID, stream, when, why'
            cand show 'Show one dead letter''s fields exactly as received (bytes that are not printable UTF-8 escaped as \xNN)'
            cand replay 'Parse dead letters again with today''s parser and store those that now pass, exactly once; the rest stay with today''s reason'
            cand purge 'Delete dead letters received before a cutoff'
        }
        &'genalytics;help;rejected;list'= {
        }
        &'genalytics;help;rejected;show'= {
        }
        &'genalytics;help;rejected;replay'= {
        }
        &'genalytics;help;rejected;purge'= {
        }
        &'genalytics;help;completions'= {
        }
        &'genalytics;help;simulate'= {
        }
        &'genalytics;help;help'= {
        }
    ]
    $completions[$command]
}
