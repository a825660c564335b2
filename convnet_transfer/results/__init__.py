"""Stage 5: Caffe logs -> tables -> the paper's figures.

    logfile   one log file of any era -> ParsedLog (glog lines, years, records -> tables)
    tables    Table (Caffe parse_log.py's columns, CSV), accuracy_column
    logs      a net's runs stitched, a results tree summarized, summary.csv/.json (the stage's public names)
    plots     the figures and the tables behind them
"""
