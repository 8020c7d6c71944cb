"""The agent core without Ray: LogService and the write and read paths it owns."""
