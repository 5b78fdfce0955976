def make(config):
    raise ValueError("no api key")
