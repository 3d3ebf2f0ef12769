"""The `compositor` commands, one module each: its arguments (`add_parser`) and
what it does (`run`). A command imports what it uses when it runs, so that
building the parser costs no heavy import."""
