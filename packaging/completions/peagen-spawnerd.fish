complete -c peagen-spawnerd -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if present)' -r -F
complete -c peagen-spawnerd -s h -l help -d 'Print help (see more with \'--help\')'
complete -c peagen-spawnerd -s V -l version -d 'Print version'
