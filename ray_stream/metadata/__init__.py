"""The metadata service without Ray: sequencing, topics, groups, durability."""
