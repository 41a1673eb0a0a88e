"""The party processes: the job loop, what they measure, how they are launched and how they talk."""
