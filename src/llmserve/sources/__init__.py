"""Where weights come from: model packs, local directories, GGUF files, the hub, checkpoint files."""
