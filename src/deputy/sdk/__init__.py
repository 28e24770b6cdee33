"""What agents and the APIs they call import; never server code."""
