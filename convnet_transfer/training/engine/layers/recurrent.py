"""RNN and LSTM, with Caffe's cont input, static input and expose_hidden."""
