// MariaDB Connector/J through capgate and directly: server-side prepared statements of common
// types, batches, transactions, errors, streaming. Prints what it observed, one line per fact;
// the Rust test compares the output of both runs. Usage: java ConnectorJ JDBC_URL ROLE
import java.math.BigDecimal;
import java.sql.*;

public class ConnectorJ {
    public static void main(String[] args) throws Exception {
        String url = args[0];
        String t = "cj_" + args[1];
        try (Connection c = DriverManager.getConnection(url)) {
            Statement s = c.createStatement();
            s.execute("CREATE DATABASE IF NOT EXISTS cj CHARACTER SET utf8mb4");
            s.execute("USE cj");
            s.execute("DROP TABLE IF EXISTS " + t);
            s.execute("CREATE TABLE " + t + " (id INT PRIMARY KEY, l BIGINT, d DECIMAL(20,4), f DOUBLE, v VARCHAR(40), b VARBINARY(40),"
                + " dt DATE, ts DATETIME(6), tm TIME, n INT NULL) ENGINE=InnoDB");
            PreparedStatement ins = c.prepareStatement("INSERT INTO " + t + " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
            for (int i = 1; i <= 50; i++) {
                ins.setInt(1, i);
                ins.setLong(2, Long.MIN_VALUE + i);
                ins.setBigDecimal(3, new BigDecimal("1234567890123.4567").add(BigDecimal.valueOf(i)));
                ins.setDouble(4, Math.PI * i);
                ins.setString(5, "välue " + i);
                ins.setBytes(6, new byte[] {(byte) i, 0, (byte) 255});
                ins.setDate(7, Date.valueOf("2026-12-03"));
                Timestamp ts = Timestamp.valueOf("2001-02-03 04:05:06");
                ts.setNanos(123456000);
                ins.setTimestamp(8, ts);
                ins.setTime(9, Time.valueOf("23:59:58"));
                ins.setNull(10, Types.INTEGER);
                ins.addBatch();
            }
            int[] counts = ins.executeBatch();
            System.out.println("batch " + counts.length);
            PreparedStatement sel = c.prepareStatement("SELECT * FROM " + t + " WHERE id BETWEEN ? AND ? ORDER BY id");
            for (int round = 0; round < 2; round++) {
                sel.setInt(1, 1 + round);
                sel.setInt(2, 3 + round);
                try (ResultSet rs = sel.executeQuery()) {
                    while (rs.next()) {
                        StringBuilder row = new StringBuilder("row");
                        for (int col = 1; col <= 10; col++) {
                            Object o = rs.getObject(col);
                            row.append(' ').append(o instanceof byte[] ? java.util.Arrays.toString((byte[]) o) : String.valueOf(o));
                        }
                        System.out.println(row);
                    }
                }
            }
            c.setAutoCommit(false);
            PreparedStatement one = c.prepareStatement("INSERT INTO " + t + " (id) VALUES (?)");
            one.setInt(1, 1000);
            one.executeUpdate();
            one.setInt(1, 1);
            try {
                one.executeUpdate();
            } catch (SQLException e) {
                System.out.println("error " + e.getErrorCode() + " " + e.getSQLState());
            }
            c.rollback();
            c.setAutoCommit(true);
            try (ResultSet rs = s.executeQuery("SELECT COUNT(*) FROM " + t)) {
                rs.next();
                System.out.println("count after rollback " + rs.getInt(1));
            }
            try {
                PreparedStatement bad = c.prepareStatement("SELECT * FROM no_such_table WHERE x = ?");
                bad.setInt(1, 1);
                bad.executeQuery();
            } catch (SQLException e) {
                System.out.println("error " + e.getErrorCode() + " " + e.getSQLState());
            }
            Statement stream = c.createStatement(ResultSet.TYPE_FORWARD_ONLY, ResultSet.CONCUR_READ_ONLY);
            stream.setFetchSize(100);
            long sum = 0;
            int rows = 0;
            try (ResultSet rs = stream.executeQuery("SELECT seq FROM seq_1_to_20000")) {
                while (rs.next()) {
                    sum += rs.getLong(1);
                    rows++;
                }
            }
            System.out.println("streamed " + rows + " " + sum);
            s.execute("DROP TABLE " + t);
            System.out.println("done");
        }
    }
}
