"""Where promptmine reads and writes data: storage URIs, image shards, prompt tables, sample inputs."""
